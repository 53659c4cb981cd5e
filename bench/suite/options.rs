//! The suite's command line: `--workloads`, `--links`, `--reps`, `--modes`, `--budget` (see the
//! crate doc), with their defaults.

use lamina::bench::{Link, Mode};

const DEFAULT_WORKLOADS: &str = "distro,python,app,weights";
const DEFAULT_LINKS: &str = "unlimited/1ms,100mbit/20ms,20mbit/50ms,10mbit/150ms";
/// Seconds the whole suite may take unless `--budget` says otherwise.
const DEFAULT_BUDGET: f64 = 900.0;

pub struct Options {
    /// Repetitions of every run (at least 1).
    pub reps: usize,
    /// Seconds the whole command may take; infinite for `--budget none`.
    pub budget: f64,
    /// Fastest first: its runs predict the others'.
    pub links: Vec<Link>,
    /// Names of the workloads asked for.
    pub workloads: Vec<String>,
    pub modes: Vec<Mode>,
}

impl Options {
    /// From the process's arguments; panics on a malformed `--budget`, link or mode.
    pub fn parse() -> Options {
        let reps: usize = arg("--reps").and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
        let budget: f64 = match arg("--budget").as_deref() {
            None => DEFAULT_BUDGET,
            Some("none") => f64::INFINITY,
            Some(b) => b.parse().unwrap_or_else(|e| panic!("--budget {b}: {e}")),
        };
        let mut links: Vec<Link> = arg("--links")
            .unwrap_or_else(|| DEFAULT_LINKS.into())
            .split(',')
            .map(|l| Link::parse(l).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        Link::sort(&mut links);
        let workloads: Vec<String> = arg("--workloads")
            .unwrap_or_else(|| DEFAULT_WORKLOADS.into())
            .split(',')
            .map(str::to_string)
            .collect();
        let modes: Vec<Mode> = arg("--modes")
            .map(|m| {
                m.split(',')
                    .map(|m| Mode::parse(m).unwrap_or_else(|e| panic!("{e}")))
                    .collect()
            })
            .unwrap_or_else(|| Mode::ALL.to_vec());
        Options {
            reps,
            budget,
            links,
            workloads,
            modes,
        }
    }
}

/// The value after `name` on the command line.
fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}
