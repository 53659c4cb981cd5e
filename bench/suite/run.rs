//! One measurement: a workload's command started in one mode through a link's relay, timed
//! until it exits, with the blob bytes and requests the registry saw and lamina's peak RSS.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::{drop_caches, lamina};
use crate::stats::RunFigures;
use crate::support::registry::TestRegistry;
use crate::workloads::Workload;

/// Every mode, in the order of the report and the plots' colours.
pub const MODES: [&str; 7] = [
    "skopeo+umoci",
    "pull",
    "lazy-cold",
    "lazy-gzindex",
    "lazy-profile",
    "lazy-warm",
    "local",
];

/// What every run needs: the checkout, the registry behind the relays, the scratch folder.
pub struct Ctx<'a> {
    pub root: &'a str,
    pub registry: &'a TestRegistry,
    pub work: &'a Path,
}

/// One run of `wl` in `mode` through the relay at `relay`: `tag` names its folders, `warm_cache`
/// is the lazy modes' cache (emptied first for `lazy-cold`). `local` runs in the tree that
/// [`crate::workloads::local_trees`] extracted.
pub fn run_mode(
    ctx: &Ctx,
    wl: &Workload,
    relay: &str,
    mode: &str,
    tag: &str,
    warm_cache: &Path,
) -> Result<RunFigures, String> {
    let gzip_ref = format!("{relay}/{}:gzip", wl.repo);
    let zc_ref = format!("{relay}/{}:zc", wl.repo);
    let dir = ctx.work.join(format!("run-{}-{mode}-{tag}", wl.name));
    let _ = Command::new("umount").arg("-l").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    let rss_file = ctx.work.join("rss");
    let _ = std::fs::remove_file(&rss_file);
    if mode == "lazy-profile" {
        // A profile recorded on another machine (another cache) and pushed, before the clock
        // starts: this mount, with an empty cache, finds it in the registry.
        ensure_profile_pushed(ctx, wl)?;
    }
    if mode == "lazy-gzindex" {
        // The gzip image as made, indexed elsewhere and the indexes pushed beside it: this
        // mount, with an empty cache, finds them in the registry.
        ensure_gzip_indexed(ctx, wl)?;
    }
    // A warm start is by digest: nothing needs the registry (looked up before the clock starts).
    let by_digest = if mode == "lazy-warm" {
        Some(manifest_digest(ctx, wl)?)
    } else {
        None
    };
    drop_caches();
    let before = ctx.registry.settled_blob_gets(&wl.repo, None);
    let t = Instant::now();
    let mut rss = 0;
    match mode {
        "skopeo+umoci" => {
            let layout = ctx.work.join(format!("skopeo-{}", wl.name));
            let _ = std::fs::remove_dir_all(&layout);
            try_run(
                Command::new("skopeo")
                    .args(["copy", "--quiet", "--src-tls-verify=false"])
                    .arg(format!("docker://{gzip_ref}"))
                    .arg(format!("oci:{}:t", layout.display())),
            )?;
            try_run(
                Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:t", layout.display()))
                    .arg(&dir),
            )?;
            try_run(&mut chroot_cmd(&dir.join("rootfs"), &wl.cmd))?;
            let _ = std::fs::remove_dir_all(&layout);
        }
        "pull" => {
            let mut c = lamina(ctx.root);
            c.arg("pull").arg(&gzip_ref).arg(&dir);
            try_run(&mut timed_rss(&mut c, &rss_file))?;
            rss = read_rss(&rss_file);
            try_run(&mut chroot_cmd(&dir, &wl.cmd))?;
        }
        "lazy-cold" | "lazy-gzindex" | "lazy-profile" | "lazy-warm" => {
            if mode != "lazy-warm" {
                let _ = std::fs::remove_dir_all(warm_cache);
            }
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let image = match &by_digest {
                Some(d) => format!("{relay}/{}@{d}", wl.repo),
                None if mode == "lazy-gzindex" => gzip_ref.clone(),
                None => zc_ref.clone(),
            };
            // Cold: no profile, even where one was pushed for lazy-profile.
            let prefetch = if mode == "lazy-profile" { "auto" } else { "readahead" };
            let out = try_run(
                lamina(ctx.root)
                    .args(["mount", "--prefetch", prefetch])
                    .arg(&image)
                    .arg(&dir)
                    .env("LAMINA_CACHE_DIR", warm_cache),
            )?;
            let ran = try_run(&mut chroot_cmd(&dir, &wl.cmd));
            rss = daemon_hwm_kb(&String::from_utf8_lossy(&out.stdout));
            let elapsed = t.elapsed();
            let _ = lamina(ctx.root).arg("umount").arg(&dir).status();
            ran?;
            let after = ctx.registry.settled_blob_gets(&wl.repo, None);
            return Ok(RunFigures {
                seconds: elapsed.as_secs_f64(),
                requests: (after.0 - before.0) as u64,
                bytes: after.1 - before.1,
                rss_kb: rss,
            });
        }
        "local" => {
            let tree = ctx.work.join(format!("local-{}", wl.name));
            let t0 = Instant::now();
            try_run(&mut chroot_cmd(&tree, &wl.cmd))?;
            return Ok(RunFigures {
                seconds: t0.elapsed().as_secs_f64(),
                ..RunFigures::default()
            });
        }
        other => return Err(format!("unknown mode {other}")),
    }
    let elapsed = t.elapsed();
    let after = ctx.registry.settled_blob_gets(&wl.repo, None);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunFigures {
        seconds: elapsed.as_secs_f64(),
        requests: (after.0 - before.0) as u64,
        bytes: after.1 - before.1,
        rss_kb: rss,
    })
}

/// Record `wl`'s access profile once per suite run (its own cache, straight to the registry, not
/// timed) and push it, so `lazy-profile` runs start from a profile made elsewhere.
fn ensure_profile_pushed(ctx: &Ctx, wl: &Workload) -> Result<(), String> {
    static PUSHED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if PUSHED.lock().unwrap().contains(&wl.repo) {
        return Ok(());
    }
    let image = format!("{}/{}:zc", ctx.registry.addr, wl.repo);
    let cache = ctx.work.join(format!("profile-cache-{}", wl.name));
    let point = ctx.work.join(format!("profile-mnt-{}", wl.name));
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&point).map_err(|e| e.to_string())?;
    let out = try_run(
        lamina(ctx.root)
            .args(["mount", "--prefetch", "none"])
            .arg(&image)
            .arg(&point)
            .env("LAMINA_CACHE_DIR", &cache),
    )?;
    let pid = daemon_pid(&String::from_utf8_lossy(&out.stdout));
    let ran = try_run(&mut chroot_cmd(&point, &wl.cmd));
    let _ = lamina(ctx.root).arg("umount").arg(&point).status();
    // The daemon writes the profile as it ends.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ran?;
    try_run(
        lamina(ctx.root)
            .args(["profile", "push"])
            .arg(&image)
            .env("LAMINA_CACHE_DIR", &cache),
    )?;
    let _ = std::fs::remove_dir_all(&cache);
    PUSHED.lock().unwrap().push(wl.repo.clone());
    Ok(())
}

/// Index `wl`'s gzip image once per suite run (its own cache, straight to the registry, not
/// timed) and push the indexes.
fn ensure_gzip_indexed(ctx: &Ctx, wl: &Workload) -> Result<(), String> {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if DONE.lock().unwrap().contains(&wl.repo) {
        return Ok(());
    }
    let cache = ctx.work.join(format!("index-cache-{}", wl.name));
    let _ = std::fs::remove_dir_all(&cache);
    let out = try_run(
        lamina(ctx.root)
            .arg("index")
            .arg(format!("{}/{}:gzip", ctx.registry.addr, wl.repo))
            .env("LAMINA_CACHE_DIR", &cache),
    )?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_dir_all(&cache);
    DONE.lock().unwrap().push(wl.repo.clone());
    Ok(())
}

/// The digest of `wl`'s converted image manifest (for this machine's platform).
fn manifest_digest(ctx: &Ctx, wl: &Workload) -> Result<String, String> {
    let out = try_run(
        lamina(ctx.root)
            .arg("inspect")
            .arg(format!("{}/{}:zc", ctx.registry.addr, wl.repo)),
    )?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("manifest")
                .map(|r| r.trim().split(' ').next().unwrap_or("").to_string())
        })
        .filter(|d| d.starts_with("sha256:"))
        .ok_or_else(|| "lamina inspect printed no manifest digest".to_string())
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

/// Run a command; Err with its stderr if it fails.
fn try_run(c: &mut Command) -> Result<std::process::Output, String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{:?} failed: {}",
            c.get_program(),
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        ))
    }
}

/// `cmd` run in `root` with a clean environment, its output dropped.
fn chroot_cmd(root: &Path, cmd: &[String]) -> Command {
    let mut c = Command::new("/usr/sbin/chroot");
    c.arg(root)
        .args(cmd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    c.stdout(std::process::Stdio::null());
    c
}

/// Peak RSS (KiB) of a command run under GNU time.
fn timed_rss(c: &mut Command, rss_file: &Path) -> Command {
    let mut t = Command::new("/usr/bin/time");
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

/// What GNU time wrote: peak RSS in KiB, 0 if unknown.
fn read_rss(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.lines().last()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Peak RSS (KiB) of the mount daemon whose pid `lamina mount` printed.
fn daemon_hwm_kb(mount_stdout: &str) -> u64 {
    let Some(pid) = daemon_pid(mount_stdout) else {
        return 0;
    };
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
