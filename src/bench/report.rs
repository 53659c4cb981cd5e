//! The results: `NAME.csv` (one row per workload, link and mode: the median time with its
//! range, the median run's bytes and requests, ratios to the full pull and to the floor, or
//! the error), `NAME-runs.csv` (every run), `NAME.md` (the link checks, then per workload a
//! table; pasteable in a design document) and the plots ([`super::plot`]); and the table
//! printed on the terminal.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::link::Link;
use super::stats::{stat_of, Stat};
use super::sweep::Results;
use super::Mode;

/// What the report is about.
pub struct Report<'a> {
    /// Heading of the markdown.
    pub title: String,
    /// The command line that made it.
    pub command: String,
    /// The machine it ran on.
    pub machine: String,
    /// Links, in the order measured.
    pub links: &'a [Link],
    /// Modes, in the order asked for.
    pub modes: &'a [Mode],
    /// (name, command) of each workload.
    pub workloads: Vec<(String, String)>,
    /// What was measured.
    pub results: &'a Results,
}

/// One cell of the summary: a workload's mode on a link.
struct Row {
    stat: Stat,
    /// Median ÷ the full pull's median (lazy modes).
    vs_full: Option<f64>,
    /// The floor, and median ÷ floor (cold lazy modes on links with a rate).
    floor: Option<f64>,
}

impl Report<'_> {
    fn rows(&self, workload: &str, l: &Link) -> Vec<(Mode, Row)> {
        let samples = &self.results.samples;
        let full = stat_of(samples, workload, &l.name(), Mode::Full).filter(|f| !f.median.is_nan());
        let needs = self.results.needs_of(workload);
        let mut rows = Vec::new();
        for m in self.modes {
            let Some(stat) = stat_of(samples, workload, &l.name(), *m) else {
                continue;
            };
            let ok = !stat.median.is_nan() && !stat.estimated;
            let vs_full = full
                .as_ref()
                .filter(|_| ok && *m != Mode::Full && *m != Mode::SkopeoUmoci)
                .map(|f| stat.median / f.median);
            let floor = needs.and_then(|n| n.floor_secs(l)).filter(|_| ok && m.is_cold());
            rows.push((*m, Row { stat, vs_full, floor }));
        }
        rows
    }

    /// The summary CSV: one row per workload, link and mode.
    pub fn csv(&self) -> String {
        let mut csv = String::from(
            "workload,link,mode,status,seconds,min_s,max_s,runs,bytes,requests,peak_rss_kb,vs_full,floor_s,vs_floor,error\n",
        );
        for (w, _) in &self.workloads {
            for l in self.links {
                for (m, row) in self.rows(w, l) {
                    let s = &row.stat;
                    let status = match (&s.failed, s.median.is_nan(), s.estimated) {
                        (_, true, _) => "failed",
                        (_, _, true) => "estimated",
                        (Some(_), _, _) => "some-failed",
                        _ => "ok",
                    };
                    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
                    let num = |v: f64| if v.is_nan() { String::new() } else { format!("{v:.4}") };
                    writeln!(
                        csv,
                        "{w},{},{},{status},{},{},{},{},{},{},{},{},{},{},{}",
                        l.name(),
                        m.name(),
                        num(s.median),
                        num(s.min),
                        num(s.max),
                        s.runs,
                        s.bytes,
                        s.requests,
                        s.rss_kb,
                        opt(row.vs_full),
                        opt(row.floor),
                        opt(row.floor.map(|f| s.median / f)),
                        csv_text(s.failed.as_deref().unwrap_or(""))
                    )
                    .expect("writing to a String");
                }
            }
        }
        csv
    }

    /// Every run, one line each; a failed run has its error, an estimate the status
    /// `estimated`.
    pub fn runs_csv(&self) -> String {
        let mut csv = String::from("workload,link,mode,rep,status,seconds,bytes,requests,peak_rss_kb,error\n");
        for s in &self.results.samples {
            let line = match &s.result {
                Ok(f) => format!(
                    "{},{},{},{},{},{:.4},{},{},{},",
                    s.workload,
                    s.link,
                    s.mode.name(),
                    s.rep,
                    if s.estimated { "estimated" } else { "ok" },
                    f.seconds,
                    f.bytes,
                    f.requests,
                    f.rss_kb
                ),
                Err(e) => format!(
                    "{},{},{},{},failed,,,,,{}",
                    s.workload,
                    s.link,
                    s.mode.name(),
                    s.rep,
                    csv_text(e)
                ),
            };
            csv.push_str(&line);
            csv.push('\n');
        }
        csv
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let r = self.results;
        let mut md = format!(
            "# {}\n\nmachine: {}  \ncommand: `{}`  \n",
            self.title, self.machine, self.command
        );
        if r.interrupted {
            md.push_str("\n**Interrupted (Ctrl-C): partial results.**\n");
        }
        md.push_str("\n## Link emulation check\n\n");
        for v in &r.validations {
            writeln!(md, "- {}", v.line()).expect("writing to a String");
        }
        for (l, why) in &r.unchecked {
            writeln!(md, "- link {l}: not checked ({why})").expect("writing to a String");
        }
        if let Some(p) = &r.plan {
            writeln!(md, "\n{p}").expect("writing to a String");
        }
        md.push_str("\n## Time to ready (median [min–max] s), MB through the link, requests, peak RSS of lamina\n");
        for (w, cmd) in &self.workloads {
            writeln!(md, "\n### {w} — `{cmd}`\n").expect("writing to a String");
            match r.needs.iter().find(|(n, _)| n == w).map(|(_, n)| n) {
                Some(Ok(n)) => match (n.opened_bytes, n.compressed_bytes()) {
                    (Some(o), Some(c)) => writeln!(
                        md,
                        "files opened: {:.1} MB (≈ {:.1} MB compressed)\n",
                        o as f64 / 1e6,
                        c / 1e6
                    ),
                    _ => writeln!(md, "files opened: not traced (strace missing or failed): no floor\n"),
                }
                .expect("writing to a String"),
                Some(Err(e)) => writeln!(md, "files opened: unknown ({e})\n").expect("writing to a String"),
                None => {}
            }
            md.push_str(&self.table(w, true));
        }
        md
    }

    /// The table of `workload`: markdown, or aligned text for the terminal.
    pub fn table(&self, workload: &str, markdown: bool) -> String {
        let head = [
            "link", "mode", "seconds", "MB", "requests", "RSS MB", "÷ full", "÷ floor",
        ];
        let mut lines: Vec<[String; 8]> = Vec::new();
        for l in self.links {
            for (m, row) in self.rows(workload, l) {
                lines.push(cells(l, m, &row));
            }
        }
        if markdown {
            let mut t = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
            for c in &lines {
                writeln!(
                    t,
                    "| {} |",
                    c.iter().map(|c| c.replace('|', "/")).collect::<Vec<_>>().join(" | ")
                )
                .expect("writing to a String");
            }
            return t;
        }
        let mut widths = head.map(|h| h.chars().count());
        for c in &lines {
            for (w, cell) in widths.iter_mut().zip(c) {
                *w = (*w).max(cell.chars().count().min(60));
            }
        }
        let fmt = |c: &[String]| {
            c.iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut t = fmt(&head.map(String::from)) + "\n";
        for c in &lines {
            t.push_str(&fmt(c));
            t.push('\n');
        }
        t
    }

    /// The tables of every workload, for the terminal.
    pub fn terminal(&self) -> String {
        let mut t = String::new();
        for (w, cmd) in &self.workloads {
            writeln!(t, "\n{w}: {cmd}").expect("writing to a String");
            t.push_str(&self.table(w, false));
        }
        if self.results.interrupted {
            t.push_str("interrupted: partial results\n");
        }
        t
    }

    /// Write `NAME.csv`, `NAME-runs.csv`, `NAME.md` and the plots into `dir`: the paths
    /// written.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (file, text) in [
            (format!("{name}.csv"), self.csv()),
            (format!("{name}-runs.csv"), self.runs_csv()),
            (format!("{name}.md"), self.markdown()),
        ] {
            std::fs::write(dir.join(&file), text)?;
            written.push(dir.join(file));
        }
        written.extend(super::plot::plots(dir, name, self)?);
        Ok(written)
    }
}

/// The table cells of one row.
fn cells(l: &Link, m: Mode, row: &Row) -> [String; 8] {
    let s = &row.stat;
    let mut c: [String; 8] = Default::default();
    c[0] = l.name();
    c[1] = m.name().to_string();
    if s.median.is_nan() {
        c[2] = format!("FAILED: {}", s.failed.as_deref().unwrap_or("?"));
        return c;
    }
    c[2] = if s.estimated {
        format!("~{:.2} (est., not run: budget)", s.median)
    } else if s.runs > 1 {
        format!("{:.2} [{:.2}–{:.2}]", s.median, s.min, s.max)
    } else {
        format!("{:.2}", s.median)
    };
    if s.failed.is_some() && !s.estimated {
        c[2].push_str(" (some runs FAILED)");
    }
    c[3] = format!("{:.1}", s.bytes as f64 / 1e6);
    c[4] = s.requests.to_string();
    c[5] = if s.rss_kb > 0 {
        format!("{:.0}", s.rss_kb as f64 / 1024.0)
    } else {
        "-".into()
    };
    c[6] = row.vs_full.map_or(String::new(), |v| format!("{v:.2}"));
    c[7] = row
        .floor
        .map_or(String::new(), |f| format!("{:.2} (floor {f:.2} s)", s.median / f));
    c
}

/// A CSV field: quoted, quotes doubled.
fn csv_text(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    format!("\"{}\"", s.replace('"', "\"\"").replace('\n', " "))
}
