//! The plots, hand-written SVG (and PNG through rsvg-convert, Debian's librsvg2-bin, when it
//! is there), one panel per workload: `NAME-startup` (time to ready per link, a line per
//! mode, estimates hollow) and `NAME-bytes` (MB through the link per mode, a bar each).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::link::Link;
use super::report::Report;
use super::stats::{stat_of, Sample};
use super::Mode;

/// A colour per mode of [`Mode::ALL`].
const COLORS: [&str; 7] = [
    "#d62728", "#1f77b4", "#2ca02c", "#8c564b", "#ff7f0e", "#9467bd", "#7f7f7f",
];
/// Panel width and height, margin.
const PW: f64 = 440.0;
const PH: f64 = 260.0;
const M: f64 = 50.0;

/// Write `NAME-startup.svg|png` and `NAME-bytes.svg|png` to `dir`: the files written.
pub fn plots(dir: &Path, name: &str, report: &Report) -> std::io::Result<Vec<PathBuf>> {
    let samples = &report.results.samples;
    let names: Vec<&str> = report.workloads.iter().map(|(w, _)| w.as_str()).collect();
    let mut svg = open(names.len());
    for (wi, wl) in names.iter().enumerate() {
        startup_panel(&mut svg, wi, wl, report.links, report.modes, samples);
    }
    svg.push_str("</svg>");
    let mut written = save_svg(dir, &format!("{name}-startup"), &svg)?;

    let mut svg = open(names.len());
    for (wi, wl) in names.iter().enumerate() {
        bytes_panel(&mut svg, wi, wl, report.links, report.modes, samples);
    }
    svg.push_str("</svg>");
    written.extend(save_svg(dir, &format!("{name}-bytes"), &svg)?);
    Ok(written)
}

/// The start of an SVG with `panels` panels side by side, on white.
fn open(panels: usize) -> String {
    format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'><rect width='100%' height='100%' fill='white'/>",
        PW * panels.max(1) as f64,
        PH + 40.0
    )
}

/// Panel `wi`: time to ready per link (fastest first), a line per mode; the legend in the first panel.
fn startup_panel(svg: &mut String, wi: usize, wl: &str, links: &[Link], modes: &[Mode], samples: &[Sample]) {
    let x0 = wi as f64 * PW;
    // (link slot, median s, estimated) per link where the mode has a time. Links are evenly
    // spaced, fastest first (they differ in rate and RTT both).
    let pts = |mode: Mode| -> Vec<(f64, f64, bool)> {
        links
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let s = stat_of(samples, wl, &l.name(), mode)?;
                (!s.median.is_nan()).then_some((i as f64 + 0.5, s.median, s.estimated))
            })
            .collect()
    };
    let all: Vec<(f64, f64, bool)> = modes.iter().flat_map(|m| pts(*m)).collect();
    let xmax = links.len().max(1) as f64;
    let ymax = all.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let sx = |x: f64| x0 + M + x / xmax * (PW - 2.0 * M);
    let sy = |y: f64| PH - M + 20.0 - y / ymax * (PH - 2.0 * M);
    write!(
        svg,
        "<text x='{}' y='16' font-size='13'>{} — time to ready (s) per link</text><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
        x0 + M, wl, sx(0.0), sy(0.0), sx(xmax), sy(0.0), sx(0.0), sy(0.0), sx(0.0), sy(ymax)
    )
    .expect("writing to a String");
    for k in 0..=4 {
        let y = ymax * k as f64 / 4.0;
        write!(
            svg,
            "<text x='{}' y='{}' text-anchor='end'>{y:.1}</text>",
            sx(0.0) - 4.0,
            sy(y) + 4.0
        )
        .expect("writing to a String");
    }
    for (i, l) in links.iter().enumerate() {
        write!(
            svg,
            "<text x='{}' y='{}' text-anchor='middle'>{}</text>",
            sx(i as f64 + 0.5),
            sy(0.0) + 14.0,
            l.name()
        )
        .expect("writing to a String");
    }
    for (k, mode) in modes.iter().enumerate() {
        let p = pts(*mode);
        if p.is_empty() {
            continue;
        }
        let mi = mode.index();
        let path: Vec<String> = p
            .iter()
            .map(|(x, y, _)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        write!(
            svg,
            "<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>",
            COLORS[mi],
            path.join(" ")
        )
        .expect("writing to a String");
        for (x, y, est) in &p {
            // A budget estimate is drawn hollow.
            write!(
                svg,
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{}' stroke='{}'/>",
                sx(*x),
                sy(*y),
                if *est { "white" } else { COLORS[mi] },
                COLORS[mi]
            )
            .expect("writing to a String");
        }
        if wi == 0 && k == 0 && all.iter().any(|p| p.2) {
            write!(
                svg,
                "<text x='{}' y='{}' fill='black'>hollow = estimate (budget)</text>",
                x0 + M + 8.0,
                40.0 + 13.0 * modes.len() as f64
            )
            .expect("writing to a String");
        }
        if wi == 0 {
            write!(
                svg,
                "<text x='{}' y='{}' fill='{}'>{}</text>",
                x0 + M + 8.0,
                40.0 + 13.0 * k as f64,
                COLORS[mi],
                mode.name()
            )
            .expect("writing to a String");
        }
    }
}

/// Panel `wi`: MB fetched per mode on the first link (the bytes do not depend on the link).
fn bytes_panel(svg: &mut String, wi: usize, wl: &str, links: &[Link], modes: &[Mode], samples: &[Sample]) {
    let bar_w = 14.0;
    let x0 = wi as f64 * PW;
    let vals: Vec<(usize, f64)> = modes
        .iter()
        .filter_map(|mode| {
            let s = stat_of(samples, wl, &links.first()?.name(), *mode)?;
            // A mode with no successful run has no bar (not a bar of 0 MB).
            (s.runs > 0).then(|| (mode.index(), s.bytes as f64 / 1e6))
        })
        .collect();
    let ymax = vals.iter().map(|v| v.1).fold(1.0, f64::max) * 1.15;
    write!(
        svg,
        "<text x='{}' y='16' font-size='13'>{} — MB through the link ({})</text>",
        x0 + M,
        wl,
        links.first().map_or(String::new(), |l| l.name())
    )
    .expect("writing to a String");
    for (k, (mi, mb)) in vals.iter().enumerate() {
        let h = mb / ymax * (PH - 2.0 * M);
        let x = x0 + M + k as f64 * (bar_w * 4.0);
        let y = PH - M + 20.0 - h;
        write!(
            svg,
            "<rect x='{x}' y='{y}' width='{}' height='{h}' fill='{}'/><text x='{}' y='{}' text-anchor='middle'>{mb:.1}</text><text x='{}' y='{}' text-anchor='middle' font-size='9'>{}</text>",
            bar_w * 2.0,
            COLORS[*mi],
            x + bar_w,
            y - 3.0,
            x + bar_w,
            PH - M + 34.0,
            Mode::ALL[*mi].name()
        )
        .expect("writing to a String");
    }
}

/// Write `<name>.svg`, and `<name>.png` through rsvg-convert: the files written (no PNG
/// without rsvg-convert; a warning says so).
fn save_svg(dir: &Path, name: &str, svg: &str) -> std::io::Result<Vec<PathBuf>> {
    let path = dir.join(format!("{name}.svg"));
    std::fs::write(&path, svg)?;
    let png = dir.join(format!("{name}.png"));
    match Command::new("rsvg-convert").arg("-o").arg(&png).arg(&path).status() {
        Ok(s) if s.success() => Ok(vec![path, png]),
        _ => {
            tracing::warn!("{name}.png not written: rsvg-convert (Debian librsvg2-bin) is missing or failed");
            Ok(vec![path])
        }
    }
}
