//! The benchmark engine: lazy pull against full extraction, on an image, a command and a set
//! of emulated links. `lamina bench` (the user's own image, `cli/bench.rs`) and the suite
//! (`cargo bench --bench suite`, built-in Debian images) both call it, so there is one engine.
//!
//! ```text
//! links (fastest first) ─► link::start: a relay per link (paces, delays, counts; the CONNECT
//!                          proxy of HTTPS registries, `tunnel`) ─► validate
//!   └─ workloads × repetitions × modes ─► measure::run_mode ─► stats::Sample
//!        full          lamina pull IMAGE DIR, then the command in DIR
//!        lazy-cold     lamina mount (empty cache, read-ahead only), the command in the mount
//!        lazy-profile  the same, starting from an access profile recorded in another cache
//!        lazy-gzindex  the gzip image, with the indexes `lamina index` pushed beside it
//!        lazy-warm     the mount again by digest, cache kept
//!        local         the command in an already extracted tree (the floor of warm runs)
//!        skopeo+umoci  skopeo copy + umoci unpack, then the command
//! ─► report: CSV (one row per link and mode; one per run), markdown, terminal table
//! ─► plot: SVG and PNG (rsvg-convert)
//! ```
//!
//! The engine spawns the `lamina` binary it is given (never the command modules in-process):
//! the peak RSS of lamina is then that of its own processes (GNU time for `pull`, the daemon's
//! VmHWM for mounts), and a Ctrl-C leaves the engine to unmount and clean up. The command is
//! started by the caller's [`Launcher`] (`lamina bench`: a chroot like `lamina run`'s). Time
//! to ready = from the start of the mode's first step until the command exits, or prints a
//! line holding the `ready_when` pattern.
//!
//! A run that fails records why in its cell; the others go on. Interruption ([`Interrupt`])
//! stops after the current run (which is killed), and what was measured is written.

pub mod floor;
pub mod link;
pub mod measure;
pub mod plan;
pub mod plot;
pub mod report;
pub mod stats;
pub mod sweep;
mod tunnel;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use link::{Link, LinkError};

/// One way of getting an image's program to ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// skopeo copy + umoci unpack + the command (the suite's reference tool chain).
    SkopeoUmoci,
    /// lamina pull + the command.
    Full,
    /// lamina mount with an empty cache, read-ahead only.
    LazyCold,
    /// The gzip image with indexes pushed beside it (`lamina index`), empty cache.
    LazyGzindex,
    /// Empty cache, starting from the access profile another cache recorded.
    LazyProfile,
    /// The mount again by digest, the cache of the earlier runs kept.
    LazyWarm,
    /// The command in an extracted tree.
    Local,
}

impl Mode {
    /// Every mode, in the order of reports and plot colours.
    pub const ALL: [Mode; 7] = [
        Mode::SkopeoUmoci,
        Mode::Full,
        Mode::LazyCold,
        Mode::LazyGzindex,
        Mode::LazyProfile,
        Mode::LazyWarm,
        Mode::Local,
    ];

    /// As `--modes` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::SkopeoUmoci => "skopeo+umoci",
            Mode::Full => "full",
            Mode::LazyCold => "lazy-cold",
            Mode::LazyGzindex => "lazy-gzindex",
            Mode::LazyProfile => "lazy-profile",
            Mode::LazyWarm => "lazy-warm",
            Mode::Local => "local",
        }
    }

    /// From its name (`pull` is the suite's older name of `full`).
    pub fn parse(s: &str) -> Result<Mode, String> {
        if s == "pull" {
            return Ok(Mode::Full);
        }
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?}; modes: {}", Mode::ALL.map(Mode::name).join(", ")))
    }

    /// A lazy mount of the image.
    pub fn is_lazy(self) -> bool {
        matches!(
            self,
            Mode::LazyCold | Mode::LazyGzindex | Mode::LazyProfile | Mode::LazyWarm
        )
    }

    /// A whole-image download before the command.
    pub fn is_full(self) -> bool {
        matches!(self, Mode::Full | Mode::SkopeoUmoci)
    }

    /// A lazy mode that starts with nothing of the image's data local.
    pub fn is_cold(self) -> bool {
        matches!(self, Mode::LazyCold | Mode::LazyGzindex | Mode::LazyProfile)
    }

    /// The index of the mode in [`Mode::ALL`] (its colour).
    pub fn index(self) -> usize {
        Mode::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// Starts the benchmarked command with a root directory, its stdout piped (for `ready_when`)
/// and its stderr dropped. Killing the child must end the command (a PID namespace's init,
/// or the program itself).
pub trait Launcher: Send + Sync {
    /// Start the command in `root`.
    fn spawn(&self, root: &Path) -> std::io::Result<Child>;
    /// The command as words, for reports and for tracing what it opens (`floor`).
    fn argv(&self) -> Vec<String>;
}

/// One image and its command.
pub struct Workload {
    /// Short name (table headings, folder names).
    pub name: String,
    /// `host:port` of a registry reached over plain HTTP, which the relays stand in for; or
    /// `https://host[:port]` of one reached over HTTPS, whose clients get the relays as their
    /// proxy (see [`link`]).
    pub registry: String,
    /// Repository and tag or digest (`suite/python:gzip`) that `full` and `skopeo+umoci` pull.
    pub full_image: String,
    /// Repository and tag or digest the lazy modes mount.
    pub lazy_image: String,
    /// Repository and tag of the gzip image `lazy-gzindex` indexes and mounts.
    pub gzip_image: Option<String>,
    /// Digest of the lazy image's manifest (warm runs mount by digest).
    pub lazy_digest: Option<String>,
    /// Compressed bytes of the lazy image's layers (the floor's compression ratio).
    pub lazy_layer_bytes: Option<u64>,
    /// `/v2/REPO/blobs/DIGEST` of a large blob for the link check.
    pub check_blob: Option<String>,
    /// Starts the command.
    pub launcher: Arc<dyn Launcher>,
    /// The command is ready at a line of its output holding this (servers never exit).
    pub ready_when: Option<String>,
    /// At most this long per run.
    pub timeout: Duration,
}

impl Workload {
    /// The command as one line.
    pub fn command_line(&self) -> String {
        self.launcher.argv().join(" ")
    }

    /// The registry as image references name it: `host[:port]`, without `https://`.
    pub fn registry_host(&self) -> &str {
        self.registry.strip_prefix("https://").unwrap_or(&self.registry)
    }
}

/// What the engine needs besides the workloads.
pub struct Settings {
    /// The lamina binary to spawn.
    pub lamina: PathBuf,
    /// Extra environment for every lamina process (e.g. isolated credentials).
    pub lamina_env: Vec<(String, String)>,
    /// Scratch folder: trees, caches, mount points (removed by the caller).
    pub work: PathBuf,
    /// Links, fastest first.
    pub links: Vec<Link>,
    /// Modes in the order run.
    pub modes: Vec<Mode>,
    /// Repetitions of each run (≥ 1).
    pub reps: usize,
    /// Seconds the whole sweep may take (see [`plan`]); infinite = measure everything.
    pub budget_secs: f64,
    /// Drop the page cache before each run (as root).
    pub drop_caches: bool,
    /// Where `lazy-profile` finds its profile: pushed to the registry (the suite), or copied
    /// into the run's cache (`lamina bench`: nothing is written to the user's registry).
    pub push_profile: bool,
    /// Progress bars on the terminal.
    pub progress: bool,
    /// Set by Ctrl-C.
    pub interrupt: Interrupt,
}

/// Set when the user asked to stop: the sweep ends after killing the current run.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Ask the sweep to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was asked to stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Unmount whatever is still mounted under `work` (a run cut short by Ctrl-C), then remove it.
pub fn clean_up(lamina: &Path, work: &Path) {
    let pids = daemon_pids(work);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 5 is the mount point (octal escapes for spaces and the like; ours have none).
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(work))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let ok = std::process::Command::new(lamina)
            .arg("umount")
            .arg(&p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount").arg("-l").arg(&p).status();
        }
    }
    // A daemon of a run cut short writes into its cache as it ends: wait for the daemons
    // whose state files are in the caches under `work`.
    for pid in pids {
        measure::wait_gone(Some(pid));
    }
    let _ = std::fs::remove_dir_all(work);
}

/// Pids in the mount state files of the caches directly under `work` (`*/mounts/*.json`).
fn daemon_pids(work: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for cache in std::fs::read_dir(work).into_iter().flatten().flatten() {
        for state in std::fs::read_dir(cache.path().join("mounts"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let pid = std::fs::read(state.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["pid"].as_u64());
            pids.extend(pid.map(|p| p as u32));
        }
    }
    pids
}

/// Cores, CPU model, memory and kernel of this machine.
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
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cores ({cpu}), {mem}, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.name()), Ok(m));
        }
        assert_eq!(Mode::parse("pull"), Ok(Mode::Full));
        assert!(Mode::parse("lazy").unwrap_err().contains("lazy-cold"));
    }
}
