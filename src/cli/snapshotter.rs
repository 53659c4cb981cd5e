//! `lamina snapshotter`: settings from the command line and `--config`, then the service.

use super::SnapshotterArgs;
use crate::registry::manifest::Platform;
use crate::snapshotter::{remote, ConfigFile, Options, DEFAULT_PREPARE_TIMEOUT};

pub(super) async fn snapshotter(args: SnapshotterArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::read(path).map_err(anyhow::Error::msg)?,
        None => ConfigFile::default(),
    };
    let mut client = args.registry.client_options()?;
    client
        .insecure_registries
        .extend(file.insecure_registries.iter().cloned());
    let fetch_timeout = file
        .fetch_timeout_secs
        .map_or(crate::fetch::DEFAULT_FETCH_TIMEOUT, std::time::Duration::from_secs);
    let options = Options {
        address: std::path::absolute(&args.address)?,
        root: std::path::absolute(&args.root)?,
        settings: remote::Settings {
            cache_dir: std::path::absolute(args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir))?,
            client,
            platform: args.registry.platform.clone().unwrap_or_else(Platform::host),
            fetch_timeout,
            prepare_timeout: file
                .prepare_timeout_secs
                .map_or(DEFAULT_PREPARE_TIMEOUT, std::time::Duration::from_secs),
            mount_timeout: std::time::Duration::from_secs(120),
            lazy: file.lazy.unwrap_or(true),
        },
    };
    crate::snapshotter::serve(options, || {
        crate::mount::signal_ready(crate::mount::daemon::ready_fd(), &Ok(()));
    })
    .await?;
    Ok(())
}
