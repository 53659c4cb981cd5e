//! `lamina store`: an additional layer store for containers/storage (podman, CRI-O, buildah).
//!
//! containers/storage, configured with `additionallayerstores = ["MOUNTPOINT:ref"]`, looks up
//! `MOUNTPOINT/<base64(image reference)>/<compressed layer digest>/` before it downloads a
//! layer; where it finds `diff`, `info` and `blob`, it takes the layer from there and stacks
//! `diff` as an overlayfs lower directory. lamina answers those lookups from each layer's
//! table of contents and serves the files from the shared chunk cache, so `podman pull`
//! fetches TOCs only and a layer used by `lamina mount`, the containerd snapshotter and
//! podman is fetched once per machine. See [`fs`] for the tree, [`layer`] for a lookup.

pub mod fs;
pub mod layer;

use std::path::Path;

use fuser::{Config, MountOption, SessionACL};

use crate::cache::chunks::ChunkStore;
use crate::fetch::Fetcher;

/// FUSE worker threads: lookups that ask the registry must not hold up reads.
const FUSE_THREADS: usize = 8;

/// Serve the store at `mountpoint` until it is unmounted; `ready` is told once the kernel has
/// the mount (or why not).
pub fn serve(
    settings: layer::Settings,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
    ready: impl FnOnce(Result<(), String>),
) -> std::io::Result<()> {
    let store = match ChunkStore::open(&settings.cache_dir) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("chunk store {}: {e}", settings.cache_dir.display());
            ready(Err(why.clone()));
            return Err(std::io::Error::other(why));
        }
    };
    let fetcher = Fetcher::new(runtime.clone(), store, settings.fetch_timeout);
    let fs = fs::StoreFs::new(settings, fetcher, runtime);
    let mut config = Config::default();
    // Writable only for the protocol: create(`use`) and rmdir(layer) are counted and refused;
    // everything else is refused with EROFS.
    // No setuid and no devices through the store itself (overlayfs applies its own mount's
    // flags to what it stacks), and only root and the store's owner may look in: a lookup
    // asks a registry named by the looker, with this process's credentials.
    config.mount_options = vec![
        MountOption::RW,
        MountOption::FSName("lamina-store".into()),
        MountOption::Subtype("lamina-store".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    config.acl = SessionACL::RootAndOwner;
    config.n_threads = Some(FUSE_THREADS);
    match fuser::spawn_mount(fs, mountpoint, &config) {
        Ok(session) => {
            ready(Ok(()));
            session.join()
        }
        Err(e) => {
            ready(Err(format!("mounting on {}: {e}", mountpoint.display())));
            Err(e)
        }
    }
}
