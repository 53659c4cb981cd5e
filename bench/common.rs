//! Shared by the benchmarks: a description of the machine they ran on.

use std::process::Command;

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
