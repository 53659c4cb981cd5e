//! The results: `suite.csv` (every run), `suite.md` (the link checks, then per workload a table
//! of medians with min–max, ratios lazy/full and lazy/floor; also printed) and the plots, in
//! `bench/results/<date>-<host>/` or `$LAMINA_BENCH_RESULTS`.

use std::fmt::Write as _;

use crate::link::{Link, Validation};
use crate::run::MODES;
use crate::stats::{stat_of, Sample};
use crate::workloads::{Needed, Workload};

/// Write `suite.csv`, `suite.md` and the plots; print the markdown.
pub fn write(
    root: &str,
    machine: &str,
    links: &[Link],
    workloads: &[Workload],
    samples: &[Sample],
    validations: &[Validation],
    needed: &Needed,
) {
    let dir = crate::common::results_dir(root);
    std::fs::write(dir.join("suite.csv"), csv(samples)).unwrap();
    let md = markdown(machine, links, workloads, samples, validations, needed);
    std::fs::write(dir.join("suite.md"), &md).unwrap();
    println!("\n{md}");
    crate::plot::plots(&dir, links, workloads, samples);
    println!("results in {}", dir.display());
}

/// One line per run; a failed run has its error, an estimate the status `estimated`.
fn csv(samples: &[Sample]) -> String {
    let mut csv = String::from("workload,link,mode,rep,status,seconds,blob_bytes,requests,peak_rss_kb,error\n");
    for s in samples {
        match &s.result {
            Ok(f) => writeln!(
                csv,
                "{},{},{},{},{},{:.4},{},{},{},",
                s.workload,
                s.link,
                s.mode,
                s.rep,
                if s.estimated { "estimated" } else { "ok" },
                f.seconds,
                f.bytes,
                f.requests,
                f.rss_kb
            ),
            Err(e) => writeln!(
                csv,
                "{},{},{},{},failed,,,,,\"{}\"",
                s.workload,
                s.link,
                s.mode,
                s.rep,
                e.replace('"', "'")
            ),
        }
        .unwrap();
    }
    csv
}

fn markdown(
    machine: &str,
    links: &[Link],
    workloads: &[Workload],
    samples: &[Sample],
    validations: &[Validation],
    needed: &Needed,
) -> String {
    let mut md = format!(
        "# lamina benchmark suite\n\nmachine: {machine}  \ncommand: `cargo bench --bench suite -- {}`  \n\n## Link emulation check\n\n",
        std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" ")
    );
    for v in validations {
        writeln!(md, "- {}", v.line()).unwrap();
    }
    md.push_str("\n## Time to ready (median [min–max] s), blob bytes, requests, peak RSS of lamina\n");
    for wl in workloads {
        let (opened, ratio) = needed.get(wl.name).copied().unwrap_or((0, 1.0));
        writeln!(
            md,
            "\n### {} — `{}`\n\nfiles opened: {:.1} MB (≈ {:.1} MB compressed)\n\n| link | mode | seconds | MB fetched | requests | peak RSS MB | lazy/full (pull) | lazy/floor |\n|---|---|---|---|---|---|---|---|",
            wl.name,
            wl.cmd.join(" "),
            opened as f64 / 1e6,
            opened as f64 * ratio / 1e6
        )
        .unwrap();
        for l in links {
            // The floor of a lazy run: the compressed share of the opened files ÷ rate + 4 RTTs.
            let floor = opened as f64 * ratio * 8.0 / l.rate_bps.map_or(f64::INFINITY, |r| r as f64)
                + 4.0 * l.rtt.as_secs_f64();
            table_rows(&mut md, wl, l, samples, floor);
        }
    }
    md
}

/// The table rows of `wl` on `l`, one per mode that has samples.
fn table_rows(md: &mut String, wl: &Workload, l: &Link, samples: &[Sample], floor: f64) {
    let by_mode = |m: &str| stat_of(samples, wl.name, &l.name(), m);
    let full = by_mode("pull");
    for m in MODES {
        let Some(s) = by_mode(m) else { continue };
        if let Some(e) = &s.failed {
            if s.median.is_nan() {
                writeln!(md, "| {} | {m} | FAILED: {} | | | | | |", l.name(), e.replace('|', "/")).unwrap();
                continue;
            }
        }
        let lazy = m.starts_with("lazy");
        let vs_full = match (&full, lazy) {
            (Some(f), true) if !f.median.is_nan() => {
                format!(
                    "{:.2}{}",
                    s.median / f.median,
                    if f.estimated { " (est. pull)" } else { "" }
                )
            }
            _ => String::new(),
        };
        if s.estimated {
            writeln!(
                md,
                "| {} | {m} | ~{:.1} (est., not run: budget) | {:.1} | {} | | | |",
                l.name(),
                s.median,
                s.bytes as f64 / 1e6,
                s.requests
            )
            .unwrap();
            continue;
        }
        let cold = m == "lazy-cold" || m == "lazy-gzindex" || m == "lazy-profile";
        let vs_floor = if cold && l.rate_bps.is_none() {
            // No rate: the floor is a few RTTs, and the ratio would only say how
            // fast this machine's CPU is.
            "— (unlimited link)".to_string()
        } else if cold {
            format!("{:.2} (floor {:.2} s)", s.median / floor, floor)
        } else {
            String::new()
        };
        writeln!(
            md,
            "| {} | {m}{} | {:.2} [{:.2}–{:.2}] | {:.1} | {} | {} | {vs_full} | {vs_floor} |",
            l.name(),
            if s.failed.is_some() { " (some runs FAILED)" } else { "" },
            s.median,
            s.min,
            s.max,
            s.bytes as f64 / 1e6,
            s.requests,
            if s.rss_kb > 0 {
                format!("{:.0}", s.rss_kb as f64 / 1024.0)
            } else {
                "-".into()
            },
        )
        .unwrap();
    }
}
