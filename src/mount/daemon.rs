//! Starting a daemon and knowing when it is ready, for every command that starts one
//! (`mount`, and the temporary mounts of `commit` and `run`).
//!
//! ```text
//! parent: pipe() ─► spawn `lamina ARGS` (env LAMINA_READY_FD=<write end>, log file)
//!         └─ read one line: "ready" → Ok; an error text → Err(text); EOF → the daemon died
//! daemon: ready_fd() also starts a session of its own (setsid: no terminal, no signals of the
//!         parent's session) ... the kernel has the mount ... signal_ready(ready_fd(), Ok(()))
//!         ─► "ready\n"
//! ```
//!
//! No sleeps: the parent returns exactly when the daemon says so, or when it exits.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable carrying the readiness pipe from the parent to its daemon.
pub const READY_FD_ENV: &str = "LAMINA_READY_FD";

/// A daemon that said it is ready.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: std::process::Child,
    /// Where its output goes.
    pub log_path: PathBuf,
}

/// Why a daemon did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Local I/O while starting it.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// It exited without a word.
    #[error("the daemon exited before it was ready; see {}", log_path.display())]
    Exited {
        /// Its log.
        log_path: PathBuf,
    },
    /// It said why it could not start.
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Start `lamina ARGS` (a command line with `--foreground`) as a daemon in a session of its
/// own, logging to `CACHE/logs/KIND.<pid>[-n].log`; returns once it says it is ready.
pub fn start(args: Vec<OsString>, cache_dir: &Path, kind: &str) -> Result<Daemon, DaemonError> {
    let logs = cache_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let log_path = logs.join(match STARTED.fetch_add(1, Ordering::Relaxed) {
        0 => format!("{kind}.{}.log", std::process::id()),
        n => format!("{kind}.{}-{n}.log", std::process::id()),
    });
    let log = std::fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
    let (reader, writer) = rustix::pipe::pipe().map_err(|e| io("creating the readiness pipe")(e.into()))?;
    let exe = std::env::current_exe().map_err(io("finding the lamina executable"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env(READY_FD_ENV, writer.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io("duplicating the log file"))?)
        .stderr(log);
    let child = cmd.spawn().map_err(io("starting the daemon"))?;
    drop(writer);
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::from(reader))
        .read_line(&mut line)
        .map_err(io("waiting for the daemon"))?;
    match line.trim() {
        "ready" => Ok(Daemon { child, log_path }),
        "" => Err(DaemonError::Exited { log_path }),
        text => Err(DaemonError::Failed(text.to_string())),
    }
}

/// A mount made by a daemon for the time of one command (`commit`, `run`): unmounted, its
/// daemon waited for (and killed if it does not end), and its directory removed when dropped,
/// unless kept.
/// A mount lamina made for the length of a command: unmounted, its daemon waited for and
/// its directory removed when dropped (unless kept).
pub struct TempMount {
    /// Where it is mounted.
    pub point: PathBuf,
    daemon: std::process::Child,
    keep: bool,
}

impl TempMount {
    /// Mount at `point` (made if missing) with `lamina ARGS --foreground` as a daemon.
    pub fn start(
        mut args: Vec<OsString>,
        point: PathBuf,
        cache_dir: &Path,
        keep: bool,
    ) -> Result<TempMount, DaemonError> {
        std::fs::create_dir_all(&point).map_err(io(format!("creating {}", point.display())))?;
        args.extend(std::iter::once(OsString::from("--foreground")));
        match start(args, cache_dir, "mount") {
            Ok(d) => Ok(TempMount {
                point,
                daemon: d.child,
                keep,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&point);
                Err(e)
            }
        }
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = super::unmount(&self.point) {
            eprintln!("lamina: unmounting {}: {e}", self.point.display());
        }
        // The daemon ends with its session (and removes a --writable layer then).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while matches!(self.daemon.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if matches!(self.daemon.try_wait(), Ok(None)) {
            eprintln!(
                "lamina: the mount daemon (pid {}) did not end; killing it",
                self.daemon.id()
            );
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        let _ = std::fs::remove_dir(&self.point);
    }
}

/// The readiness pipe this process was started with, if it is a daemon started by [`start`];
/// such a daemon is also moved into a session of its own here (it is never a process group
/// leader, so `setsid` cannot fail for want of that), away from the terminal and the
/// signals of the command that started it.
pub fn ready_fd() -> Option<i32> {
    let fd = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse().ok())?;
    if let Err(e) = rustix::process::setsid() {
        tracing::warn!(error = %e, "could not start a session of its own");
    }
    Some(fd)
}

/// Tell the parent waiting in [`start`] that the daemon is ready, or why it is not.
pub fn signal_ready(fd: Option<i32>, result: &Result<(), String>) {
    let Some(fd) = fd else { return };
    // Re-opening the inherited pipe through /proc avoids taking ownership of a raw descriptor.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
    {
        let _ = match result {
            Ok(()) => f.write_all(b"ready\n"),
            Err(e) => f.write_all(e.as_bytes()),
        };
    }
}
