//! Shared by the benchmarks: a description of the machine they ran on, and the few helpers
//! every benchmark needs.

use std::process::Command;
use std::time::{Duration, Instant};

/// Write back the last run's files, then empty the page cache, so every run starts alike:
/// no earlier run's writeback competes with it, and the registry's blobs come from disk.
pub fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The middle of some timings.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// How long `f` takes.
pub fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// The release build of lamina in this checkout, quiet.
pub fn lamina(root: &str) -> Command {
    let mut c = Command::new(format!("{root}/target/release/lamina"));
    c.arg("--quiet");
    c
}

/// Cores, CPU model, memory and kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.0} GiB", k as f64 / 1048576.0));
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), {mem}, Linux {kernel}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// `bench/results/<date>-<host>/` of this checkout, created.
pub fn results_dir(root: &str) -> std::path::PathBuf {
    let out = |c: &mut Command| {
        c.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let host = out(&mut Command::new("hostname"));
    let date = out(Command::new("date").arg("+%Y-%m-%d"));
    let dir = std::path::PathBuf::from(root)
        .join("bench/results")
        .join(format!("{date}-{}", if host.is_empty() { "host" } else { &host }));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
