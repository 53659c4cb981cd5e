//! `lamina store`: as a daemon that says when it is ready (like `mount`), or in the foreground.

use super::StoreArgs;
use crate::layerstore::layer::Settings;
use crate::mount::daemon;
use crate::registry::manifest::Platform;

pub(super) fn store(args: StoreArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    if !args.mountpoint.is_dir() {
        anyhow::bail!("mount point {} is not a directory", args.mountpoint.display());
    }
    if !args.foreground {
        let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        argv.push("--foreground".into());
        let d = daemon::start(argv, &cache_dir, "store")?;
        outln!(
            "layer store at {} (daemon pid {}, log {}); storage.conf: additionallayerstores = [\"{}:ref\"]",
            args.mountpoint.display(),
            d.child.id(),
            d.log_path.display(),
            std::path::absolute(&args.mountpoint)?.display()
        )?;
        return Ok(());
    }
    let ready_fd = daemon::ready_fd();
    let settings = Settings {
        cache_dir,
        client: args.registry.client_options()?,
        platform: args.registry.platform.clone().unwrap_or_else(Platform::host),
        fetch_timeout: std::time::Duration::from_secs(args.fetch_timeout.max(1)),
        lookup_timeout: std::time::Duration::from_secs(args.lookup_timeout.max(1)),
    };
    crate::layerstore::serve(settings, &args.mountpoint, runtime.handle().clone(), |r| {
        crate::mount::signal_ready(ready_fd, &r.map_err(|e| format!("{e}\n")));
    })?;
    Ok(())
}
