//! What the command needs, for the floor of a cold lazy run: the image extracted once (the
//! tree `local` runs in), the bytes of the files the command opens there (strace, when it is
//! installed), and the lazy image's compression ratio (layer bytes ÷ tree bytes).
//!
//! Floor on a link = opened bytes × ratio ÷ rate + 4 round trips (manifest, config, TOCs in
//! parallel, data). The trace starts the command with a plain `chroot` (not the launcher's
//! namespaces), which opens the same files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::link::Link;
use super::measure::Ctx;

/// Round trips a cold lazy run cannot avoid: manifest, config, TOCs (in parallel), data.
const FLOOR_ROUND_TRIPS: f64 = 4.0;

/// What the workload's command needs from its image.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Bytes of the regular files the command opened (None: not traced).
    pub opened_bytes: Option<u64>,
    /// Compressed ÷ uncompressed bytes of the lazy image.
    pub ratio: Option<f64>,
}

impl Needs {
    /// The opened files' compressed bytes.
    pub fn compressed_bytes(&self) -> Option<f64> {
        Some(self.opened_bytes? as f64 * self.ratio?)
    }

    /// Seconds a cold lazy run cannot beat on `link` (None: unknown, or an unlimited link,
    /// where it would only say how fast this machine is).
    pub fn floor_secs(&self, link: &Link) -> Option<f64> {
        let rate = link.rate_bps?;
        Some(self.compressed_bytes()? * 8.0 / rate as f64 + FLOOR_ROUND_TRIPS * link.rtt.as_secs_f64())
    }
}

/// Extract the lazy image into the workload's `local` tree (straight from the registry, not
/// counted) and measure what the command opens there.
pub fn prepare(ctx: &Ctx) -> Result<Needs, String> {
    let wl = ctx.wl;
    let tree = ctx.local_tree();
    let _ = std::fs::remove_dir_all(&tree);
    let out = Command::new(&ctx.settings.lamina)
        .args(["--quiet", "pull"])
        .arg(format!("{}/{}", wl.registry_host(), wl.lazy_image))
        .arg(&tree)
        .envs(ctx.settings.lamina_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("lamina pull: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tree);
        return Err(format!(
            "extracting the image: {}",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        ));
    }
    let tree_bytes = tree_bytes(&tree);
    let ratio = wl
        .lazy_layer_bytes
        .filter(|_| tree_bytes > 0)
        .map(|c| c as f64 / tree_bytes as f64);
    Ok(Needs {
        opened_bytes: opened_bytes(&tree, ctx),
        ratio,
    })
}

/// Bytes of the regular files under `root` (hard links once).
fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// Files the command opens in `tree` (strace -f of a chroot), total bytes; None without strace
/// or when the trace fails.
fn opened_bytes(tree: &Path, ctx: &Ctx) -> Option<u64> {
    let wl = ctx.wl;
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let trace = ctx.settings.work.join(format!("trace-{}", wl.name));
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(strace)
        .args(["-f", "-qq", "-e", "trace=openat,open,execve", "-o"])
        .arg(&trace)
        .arg("/usr/sbin/chroot")
        .arg(tree)
        .args(wl.launcher.argv())
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: stopping it kills strace and the program it traces together (a
        // killed strace only detaches from its tracees).
        .process_group(0)
        .spawn()
        .ok()?;
    // A server never exits: stop at its ready line, or at the timeout.
    let deadline = Instant::now() + wl.timeout;
    let (tx, rx) = std::sync::mpsc::channel();
    let outputs = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    ];
    for out in outputs.into_iter().flatten() {
        super::measure::watch_lines(out, wl.ready_when.clone(), tx.clone());
    }
    loop {
        if rx.try_recv().is_ok() || Instant::now() > deadline || ctx.settings.interrupt.is_set() {
            super::measure::kill(&mut child);
            break;
        }
        if child.try_wait().ok()?.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&trace).ok()?;
    let _ = std::fs::remove_file(&trace);
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines() {
        if l.contains("= -1") || l.contains("O_DIRECTORY") {
            continue;
        }
        if let Some(p) = l.split('"').nth(1) {
            if p.starts_with('/') {
                seen.insert(p.to_string());
            }
        }
    }
    Some(
        seen.iter()
            .filter_map(|p| std::fs::metadata(tree.join(p.trim_start_matches('/'))).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_compressed_bytes_over_rate_plus_round_trips() {
        let n = Needs {
            opened_bytes: Some(10_000_000),
            ratio: Some(0.5),
        };
        let l = Link::parse("20mbit/50ms").unwrap();
        assert!((n.floor_secs(&l).unwrap() - (2.0 + 0.2)).abs() < 1e-9);
        assert_eq!(n.floor_secs(&Link::parse("unlimited/1ms").unwrap()), None);
        assert_eq!(Needs::default().floor_secs(&l), None);
    }
}
