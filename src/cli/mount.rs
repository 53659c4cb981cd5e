//! `mount` (in the foreground, or as a daemon that says when it is ready) and `stats`.

use anyhow::Context as _;

use super::{mb, MountArgs, StatsArgs};
use crate::mount::daemon;
use crate::registry::manifest::Platform;

pub(super) fn mount(args: MountArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    if !args.mountpoint.is_dir() {
        anyhow::bail!("mount point {} is not a directory", args.mountpoint.display());
    }
    if let Some(dir) = args
        .upper
        .as_deref()
        .filter(|d| crate::upper::Identity::is_upper_dir(d))
    {
        let recorded = crate::upper::Identity::read(dir)?.metacopy;
        if recorded != args.metacopy && !args.foreground {
            eprintln!(
                "lamina: note: {} was made {} metacopy; it keeps that choice",
                dir.display(),
                if recorded { "with" } else { "without" }
            );
        }
    }
    if !args.foreground {
        return spawn_mount_daemon(&args, &cache_dir);
    }
    let ready_fd = daemon::ready_fd();
    let upper = match (&args.upper, args.writable) {
        (Some(dir), _) => Some(crate::mount::UpperOptions {
            dir: std::path::absolute(dir)?,
            remove_at_end: false,
            metacopy: args.metacopy,
            backend: args.overlay,
        }),
        (None, true) => Some(crate::mount::UpperOptions {
            dir: cache_dir.join("uppers").join(format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            )),
            remove_at_end: !args.keep,
            metacopy: args.metacopy,
            backend: args.overlay,
        }),
        (None, false) => None,
    };
    let options = crate::mount::MountOptions {
        platform: args.registry.platform.clone().unwrap_or_else(Platform::host),
        client: args.registry.client_options()?,
        cache_dir,
        fetch_timeout: std::time::Duration::from_secs(args.fetch_timeout.max(1)),
        cache_max_bytes: args.cache_max_bytes,
        upper,
        passthrough: !args.no_passthrough,
        readahead: args.prefetch != super::Prefetch::None,
        profile: args.prefetch == super::Prefetch::Auto,
        pull: args.pull,
        layers: args.layers,
    };
    let prepared = match runtime.block_on(crate::mount::prepare(&args.image, &options)) {
        Ok(p) => p,
        Err(e) => {
            crate::mount::signal_ready(ready_fd, &Err(format!("{e}\n")));
            return Err(e.into());
        }
    };
    let image = args.image.to_string();
    let mountpoint = args.mountpoint.clone();
    let image_for_state = image.clone();
    crate::mount::serve(
        &image_for_state,
        prepared,
        &args.mountpoint,
        &options,
        runtime.handle().clone(),
        |r| {
            if r.is_ok() && ready_fd.is_none() {
                eprintln!(
                    "mounted {image} at {} (foreground; stop with lamina umount)",
                    mountpoint.display()
                );
            }
            crate::mount::signal_ready(ready_fd, &r.map_err(|e| format!("{e}\n")));
        },
    )?;
    Ok(())
}

/// Start `lamina mount --foreground` as a daemon and wait until it says the mount is ready.
fn spawn_mount_daemon(args: &MountArgs, cache_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    argv.push("--foreground".into());
    let d = daemon::start(argv, cache_dir, "mount")?;
    outln!(
        "mounted {} at {} (daemon pid {}, log {})",
        args.image,
        args.mountpoint.display(),
        d.child.id(),
        d.log_path.display()
    )?;
    Ok(())
}

pub(super) fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    let path = crate::mount::state_path(&cache_dir, &args.mountpoint);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "no running lamina mount at {} (looked for {})",
            args.mountpoint.display(),
            path.display()
        )
    })?;
    if args.json {
        outln!("{}", String::from_utf8_lossy(&text))?;
        return Ok(());
    }
    let state: crate::mount::MountState = serde_json::from_slice(&text).context("reading the mount state")?;
    let s = &state.stats;
    outln!("image      {}", state.image)?;
    outln!("mount      {} (daemon pid {})", state.mountpoint.display(), state.pid)?;
    if let Some(upper) = &state.upper {
        let by = state.overlay.as_deref().unwrap_or("lamina");
        outln!("writable   changes in {} (served by {by})", upper.display())?;
    }
    outln!(
        "fetched    {} in {} requests, {} chunks; {} cache hits; {} timeouts",
        mb(s.fetched_bytes),
        s.requests,
        s.fetched_chunks,
        s.hits,
        s.timeouts
    )?;
    outln!(
        "prefetch   {} fetched ahead, {} used, {} not (yet) used; {}",
        mb(s.prefetched_bytes),
        mb(s.prefetch_used_bytes),
        mb(s.prefetched_bytes.saturating_sub(s.prefetch_used_bytes)),
        match (s.profile_chunks, s.profile_stopped) {
            (0, _) => "no access profile".to_string(),
            (n, false) => format!("access profile of {n} chunks"),
            (n, true) => format!("access profile of {n} chunks, stopped: the workload did not follow it"),
        }
    )?;
    outln!(
        "chunk wait p50 {:.1} ms, p99 {:.1} ms",
        s.wait_p50_micros as f64 / 1e3,
        s.wait_p99_micros as f64 / 1e3
    )?;
    if state.requests_by_host.len() > 1 {
        let hosts: Vec<String> = state.requests_by_host.iter().map(|(h, n)| format!("{h} {n}")).collect();
        outln!("served by  {} (requests; hosts.toml mirrors first)", hosts.join(", "))?;
    }
    let cache = crate::cache::CacheDir::open(&cache_dir)?;
    let store = crate::cache::chunks::ChunkStore::open(&cache_dir)?;
    for (i, digest) in state.layers.iter().enumerate() {
        let c = s.layers.get(digest).cloned().unwrap_or_default();
        let status = state.layer_status.get(i).map(String::as_str).unwrap_or("indexed");
        let local = digest
            .parse()
            .ok()
            .and_then(|d| crate::index::disk::load(&cache.index_path(&d)).ok())
            .map(|ix| store.local_percent(&ix));
        let local = match status {
            "indexed" => local.map_or("?".to_string(), |p| format!("{p:.1}%")),
            other => other.to_string(),
        };
        outln!(
            "layer      {} fetched {:>10} in {:>5} requests, {local} local",
            &digest[..19],
            mb(c.bytes),
            c.requests
        )?;
    }
    Ok(())
}
