//! One measurement: a workload's command started in one mode through a link's relay, timed
//! until it is ready (it exits, or prints the `ready_when` line), with the bytes and requests
//! that crossed the relay and lamina's peak RSS. Every step waits with a deadline and gives
//! up at once when the run is interrupted; whatever a run mounted or made is removed before
//! it returns, failed or not.
//!
//! Requests: the relay counts the request lines of plain HTTP. Inside TLS it sees none, so
//! for an HTTPS registry they are lamina's own count of the requests it made (answered ones,
//! a redirect or a token challenge followed within one): `full` from `lamina pull`'s summary,
//! the lazy modes from the mount's state (`lamina stats --json`) once the command is ready.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::link::Relay;
use super::stats::RunFigures;
use super::{Interrupt, Mode, Settings, Workload};

/// How often a wait looks at its child, the deadline and the interrupt.
const POLL: Duration = Duration::from_millis(10);
/// Untimed preparations (a profile recorded, indexes pushed) may take this long.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(1800);
/// The lamina daemon writes its profile as it ends: wait this long for it.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// A mount rewrites its state (with its request counts) every 0.5 s: wait this long after the
/// command is ready (untimed) for a state that counts its requests.
const STATE_REFRESH: Duration = Duration::from_millis(600);

/// Where one run happens.
pub struct Ctx<'a> {
    /// The engine's settings.
    pub settings: &'a Settings,
    /// The relay of the link measured.
    pub relay: &'a Relay,
    /// The workload.
    pub wl: &'a Workload,
}

/// The repository part of `repo:tag` or `repo@digest`.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

impl Ctx<'_> {
    fn lamina(&self) -> Command {
        let mut c = Command::new(&self.settings.lamina);
        c.arg("--quiet");
        for (k, v) in &self.settings.lamina_env {
            c.env(k, v);
        }
        c
    }

    /// lamina for a measured step: its traffic crosses the link (for an HTTPS registry, the
    /// relay is its proxy).
    fn lamina_over_link(&self) -> Command {
        let mut c = self.lamina();
        c.envs(self.relay.env());
        c
    }

    fn work(&self, what: &str) -> PathBuf {
        self.settings.work.join(format!("{what}-{}", self.wl.name))
    }

    /// The lazy modes' cache of this workload (kept between runs for `lazy-warm`).
    pub fn cache(&self) -> PathBuf {
        self.work("cache")
    }

    /// The extracted tree `local` runs in.
    pub fn local_tree(&self) -> PathBuf {
        self.work("local")
    }
}

/// One run of the workload in `mode`; `tag` names its folders.
pub fn run_mode(ctx: &Ctx, mode: Mode, tag: &str) -> Result<RunFigures, String> {
    let wl = ctx.wl;
    let dir = ctx.settings.work.join(format!("run-{}-{}-{tag}", wl.name, mode.name()));
    let _ = Command::new("umount")
        .arg("-l")
        .arg(&dir)
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    // Untimed preparations: a profile recorded elsewhere, indexes pushed, a digest looked up.
    match mode {
        Mode::LazyProfile => ensure_profile(ctx)?,
        Mode::LazyGzindex => ensure_gzip_indexed(ctx)?,
        _ => {}
    }
    // A cold mount starts from an empty cache. Emptying it is not the mount's work (the last
    // run's cache of a bulk reader is tens of thousands of files: seconds to remove).
    if matches!(mode, Mode::LazyCold | Mode::LazyProfile | Mode::LazyGzindex) {
        let _ = std::fs::remove_dir_all(ctx.cache());
        if mode == Mode::LazyProfile && !ctx.settings.push_profile {
            copy_profiles(&ctx.work("profile-cache"), &ctx.cache())?;
        }
    }
    if ctx.settings.drop_caches {
        drop_caches();
    }
    let before = ctx.relay.counters.snapshot();
    let t = Instant::now();
    let deadline = t + wl.timeout;
    // (peak RSS, when the command was ready, requests by lamina's own count)
    let done = match mode {
        Mode::Local => {
            let tree = ctx.local_tree();
            if !tree.is_dir() {
                return Err("no extracted tree (its lamina pull failed)".into());
            }
            run_command(ctx, &tree, deadline).map(|ready| (0, ready, 0))
        }
        Mode::Full => full(ctx, &dir, deadline),
        Mode::SkopeoUmoci => skopeo_umoci(ctx, &dir, deadline),
        _ => lazy(ctx, mode, &dir, deadline),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (rss_kb, ready, lamina_requests) = done?;
    let elapsed = ready.duration_since(t).as_secs_f64();
    let after = ctx.relay.counters.snapshot();
    Ok(RunFigures {
        seconds: elapsed,
        requests: if ctx.relay.tunnel {
            lamina_requests
        } else {
            after.0 - before.0
        },
        bytes: after.1 - before.1,
        rss_kb,
    })
}

/// (peak RSS, when the command was ready, requests by lamina's count)
type Done = (u64, Instant, u64);

/// `lamina pull` (under GNU time for its peak RSS, where it is installed), then the command.
fn full(ctx: &Ctx, dir: &Path, deadline: Instant) -> Result<Done, String> {
    let image = format!("{}/{}", ctx.relay.image_host, ctx.wl.full_image);
    let rss_file = dir.with_extension("rss");
    let mut c = ctx.lamina_over_link();
    c.arg("pull").arg(&image).arg(dir);
    let out = run_step(&mut with_time(c, &rss_file), deadline, &ctx.settings.interrupt)?;
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.lines().last()?.trim().parse().ok())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&rss_file);
    Ok((rss, run_command(ctx, dir, deadline)?, pull_requests(&out)))
}

/// The requests `lamina pull` counted: `… MB downloaded in N requests, …` (0 if not said).
fn pull_requests(stdout: &str) -> u64 {
    stdout
        .split(" downloaded in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The requests a running mount counted (0 if unknown), from `lamina stats --json`: those
/// answered by each host it asked.
fn mount_requests(ctx: &Ctx, cache: &Path, dir: &Path) -> u64 {
    let out = ctx
        .lamina()
        .args(["stats", "--json", "--cache-dir"])
        .arg(cache)
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let state = out
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .unwrap_or_default();
    let by_host = state["requests_by_host"].as_array().cloned().unwrap_or_default();
    by_host.iter().filter_map(|pair| pair[1].as_u64()).sum()
}

/// skopeo copy to an OCI layout, umoci unpack, then the command. For an HTTPS registry skopeo
/// gets the relay as its proxy and uses its own certificate directories (containers-certs.d:
/// /etc/containers/certs.d, /etc/docker/certs.d); its requests are not counted.
fn skopeo_umoci(ctx: &Ctx, dir: &Path, deadline: Instant) -> Result<Done, String> {
    let layout = dir.with_extension("layout");
    let _ = std::fs::remove_dir_all(&layout);
    let i = &ctx.settings.interrupt;
    let host = &ctx.relay.image_host;
    if ctx.relay.tunnel && is_loopback(host) {
        return Err(format!(
            "skopeo (Go) never sends a loopback address ({host}) through a proxy: its traffic would not cross the link"
        ));
    }
    let mut skopeo = Command::new("skopeo");
    skopeo.args(["copy", "--quiet"]).envs(ctx.relay.env());
    if !ctx.relay.tunnel {
        skopeo.arg("--src-tls-verify=false");
    }
    let result = (|| {
        run_step(
            skopeo
                .arg(format!("docker://{host}/{}", ctx.wl.full_image))
                .arg(format!("oci:{}:t", layout.display())),
            deadline,
            i,
        )?;
        run_step(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:t", layout.display()))
                .arg(dir),
            deadline,
            i,
        )?;
        run_command(ctx, &dir.join("rootfs"), deadline)
    })();
    let _ = std::fs::remove_dir_all(&layout);
    result.map(|ready| (0, ready, 0))
}

/// Whether `host[:port]` is a loopback name or address (as Go's proxy rules see it).
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A lazy mount (cache emptied unless warm), the command in it, the daemon's peak RSS, the
/// unmount, and the daemon's end (it writes the profile into the cache as it ends: the next
/// run must find the cache as this one left it).
fn lazy(ctx: &Ctx, mode: Mode, dir: &Path, deadline: Instant) -> Result<Done, String> {
    let wl = ctx.wl;
    let cache = ctx.cache();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let host = &ctx.relay.image_host;
    let image = match (mode, &wl.lazy_digest, &wl.gzip_image) {
        (Mode::LazyWarm, Some(d), _) => format!("{host}/{}@{d}", repository(&wl.lazy_image)),
        (Mode::LazyGzindex, _, Some(g)) => format!("{host}/{g}"),
        (Mode::LazyGzindex, _, None) => return Err("no gzip image to index".into()),
        _ => format!("{host}/{}", wl.lazy_image),
    };
    // Cold: no profile, even where one was recorded for lazy-profile.
    let prefetch = if mode == Mode::LazyProfile { "auto" } else { "readahead" };
    let mut c = ctx.lamina_over_link();
    c.args(["mount", "--prefetch", prefetch, "--cache-dir"])
        .arg(&cache)
        .arg(&image)
        .arg(dir);
    let out = run_step(&mut c, deadline, &ctx.settings.interrupt)?;
    let ran = run_command(ctx, dir, deadline);
    let pid = daemon_pid(&out);
    let rss = pid.map_or(0, daemon_hwm_kb);
    let requests = if ctx.relay.tunnel && ran.is_ok() {
        std::thread::sleep(STATE_REFRESH);
        mount_requests(ctx, &cache, dir)
    } else {
        0
    };
    let _ = ctx.lamina().arg("umount").arg(dir).status();
    wait_gone(pid);
    ran.map(|ready| (rss, ready, requests))
}

/// Wait (a while) for process `pid` to end.
pub fn wait_gone(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let until = Instant::now() + DAEMON_EXIT_TIMEOUT;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
        std::thread::sleep(POLL);
    }
}

/// Copy the profiles of `from` (a cache) into `to` (a cache).
fn copy_profiles(from: &Path, to: &Path) -> Result<(), String> {
    let dst = to.join("profiles");
    std::fs::create_dir_all(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    let src = from.join("profiles");
    for e in std::fs::read_dir(&src).map_err(|e| format!("no recorded profile in {}: {e}", src.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        std::fs::copy(e.path(), dst.join(e.file_name())).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Record the workload's access profile once (its own cache, straight to the registry, not
/// timed) and, for the suite, push it: `lazy-profile` runs start from a profile made elsewhere.
fn ensure_profile(ctx: &Ctx) -> Result<(), String> {
    let cache = ctx.work("profile-cache");
    let done = cache.join("recorded");
    if done.exists() {
        return Ok(());
    }
    let image = format!("{}/{}", ctx.wl.registry_host(), ctx.wl.lazy_image);
    let point = ctx.work("profile-mnt");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&point).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + PREPARE_TIMEOUT;
    let i = &ctx.settings.interrupt;
    let mut c = ctx.lamina();
    c.args(["mount", "--prefetch", "none", "--cache-dir"])
        .arg(&cache)
        .arg(&image)
        .arg(&point);
    let out = run_step(&mut c, deadline, i)?;
    let ran = run_command(ctx, &point, Instant::now() + ctx.wl.timeout);
    let _ = ctx.lamina().arg("umount").arg(&point).status();
    // The daemon writes the profile as it ends.
    wait_gone(daemon_pid(&out));
    let _ = std::fs::remove_dir(&point);
    ran.map_err(|e| format!("recording the profile: {e}"))?;
    if ctx.settings.push_profile {
        let mut c = ctx.lamina();
        c.args(["profile", "push", "--cache-dir"]).arg(&cache).arg(&image);
        run_step(&mut c, deadline, i)?;
    }
    std::fs::write(&done, b"").map_err(|e| e.to_string())
}

/// Index the workload's gzip image once (its own cache, straight to the registry, not timed)
/// and push the indexes.
fn ensure_gzip_indexed(ctx: &Ctx) -> Result<(), String> {
    let cache = ctx.work("index-cache");
    if cache.join("indexed").exists() {
        return Ok(());
    }
    let Some(gzip) = &ctx.wl.gzip_image else {
        return Err("no gzip image to index".into());
    };
    let _ = std::fs::remove_dir_all(&cache);
    let mut c = ctx.lamina();
    c.args(["index", "--cache-dir"])
        .arg(&cache)
        .arg(format!("{}/{gzip}", ctx.wl.registry_host()));
    run_step(&mut c, Instant::now() + PREPARE_TIMEOUT, &ctx.settings.interrupt)?;
    std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    std::fs::write(cache.join("indexed"), b"").map_err(|e| e.to_string())
}

/// Start the workload's command in `root` and wait until it is ready: it exits with status
/// 0, or (with `ready_when`) prints a line holding the pattern, when it is killed. Returns
/// when it was ready.
pub fn run_command(ctx: &Ctx, root: &Path, deadline: Instant) -> Result<Instant, String> {
    let wl = ctx.wl;
    let mut child = wl
        .launcher
        .spawn(root)
        .map_err(|e| format!("starting {}: {e}", wl.command_line()))?;
    let (tx, rx) = mpsc::channel::<()>();
    let outputs = [
        child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
        child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
    ];
    for out in outputs.into_iter().flatten() {
        watch_lines(out, wl.ready_when.clone(), tx.clone());
    }
    let interrupt = &ctx.settings.interrupt;
    loop {
        if rx.try_recv().is_ok() {
            let ready = Instant::now();
            kill(&mut child);
            return Ok(ready);
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let ended = Instant::now();
            // The line may have come just before the exit.
            if wl.ready_when.is_some() && rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return Ok(ended);
            }
            return match (&wl.ready_when, status.success()) {
                (None, true) => Ok(ended),
                (None, false) => Err(format!("the command exited with {status}")),
                (Some(p), _) => Err(format!("the command exited ({status}) before printing {p:?}")),
            };
        }
        if let Some(e) = stop_reason(deadline, interrupt, wl.timeout) {
            kill(&mut child);
            return Err(e);
        }
        std::thread::sleep(POLL);
    }
}

/// Read `out` line by line to its end, sending on `tx` for each line holding `pattern`.
pub(super) fn watch_lines(out: Box<dyn Read + Send>, pattern: Option<String>, tx: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if pattern
                .as_deref()
                .is_some_and(|p| String::from_utf8_lossy(&line).contains(p))
            {
                let _ = tx.send(());
            }
            line.clear();
        }
    });
}

/// Why a wait must stop now, if it must.
fn stop_reason(deadline: Instant, interrupt: &Interrupt, timeout: Duration) -> Option<String> {
    if interrupt.is_set() {
        Some("interrupted".into())
    } else if Instant::now() > deadline {
        Some(format!("timed out after {} s", timeout.as_secs()))
    } else {
        None
    }
}

/// Kill `child` and its process group (every step is started in a group of its own, so a
/// lamina pull under GNU time, or a program under strace, goes with it), then reap it.
pub(super) fn kill(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Run a step (lamina, skopeo, umoci) to its end: its stdout, or an error with the last line
/// of its stderr.
fn run_step(c: &mut Command, deadline: Instant, interrupt: &Interrupt) -> Result<String, String> {
    use std::os::unix::process::CommandExt as _;
    let program = c.get_program().to_string_lossy().to_string();
    // What this step may take, for the message if it runs out.
    let allowed = deadline.saturating_duration_since(Instant::now());
    let mut child = c
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if let Some(e) = stop_reason(deadline, interrupt, allowed) {
            kill(&mut child);
            return Err(format!("{program}: {e}"));
        }
        std::thread::sleep(POLL);
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        let last = err.trim().lines().last().unwrap_or("").to_string();
        Err(format!("{program} failed ({status}): {last}"))
    }
}

/// `c` under GNU time writing its peak RSS (KiB) to `rss_file`; `c` itself without it.
fn with_time(c: Command, rss_file: &Path) -> Command {
    const TIME: &str = "/usr/bin/time";
    if !Path::new(TIME).exists() {
        return c;
    }
    let mut t = Command::new(TIME);
    t.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file)
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    t
}

/// Write back the last run's files, then empty the page cache, so every run starts alike.
fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The daemon pid `lamina mount` printed.
fn daemon_pid(stdout: &str) -> Option<u32> {
    stdout
        .split("daemon pid ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Peak RSS (KiB) of a process (0 if unknown).
fn daemon_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        for (image, repo) in [
            ("suite/python:zc", "suite/python"),
            ("a/b@sha256:00", "a/b"),
            ("a/b", "a/b"),
            ("a/b:1@sha256:00", "a/b"),
        ] {
            assert_eq!(repository(image), repo, "{image}");
        }
        assert_eq!(daemon_pid("mounted x (daemon pid 42)\n"), Some(42));
        assert_eq!(
            pull_requests("pulled r (sha256:0) into d: 2 layers, 9 entries, 1.2 MB downloaded in 4 requests, 3.0 MB"),
            4
        );
        assert_eq!(pull_requests("pulled r"), 0);
        for (host, loopback) in [
            ("127.0.0.1:5000", true),
            ("localhost", true),
            ("[::1]:443", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_loopback(host), loopback, "{host}");
        }
    }
}
