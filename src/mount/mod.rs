//! `lamina mount` and `lamina umount`: resolve the image, read every layer's TOC (or its index
//! from the cache), merge them, and serve the union through FUSE.
//!
//! ```text
//! lamina mount IMAGE DIR ──(re-exec with --foreground, readiness pipe)──► daemon
//!   daemon: resolve ─► TOCs in parallel (cached indexes first) ─► LiveUnion ─► FUSE session
//!           ├─ writes "ready" on the pipe once the kernel has the mount; the parent exits 0
//!           └─ plain layers without a cached index stream in the background ([`stream`])
//! lamina umount DIR ──► unmount (lazy) ──► the daemon's session ends ─► it exits
//! ```

pub mod daemon;
pub mod profiling;
pub mod stacked;
pub mod stream;

pub use daemon::signal_ready;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::cache::chunks::ChunkStore;
use crate::cache::CacheDir;
use crate::fetch::locate::{read_layer_toc, LocateError};
use crate::fetch::{Fetcher, LayerSource};
use crate::fs::ImageFs;
use crate::index::{disk, LayerIndex};
use crate::model::ChunkKind;
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::registry::{resolve_image_with, ClientOptions, PullPolicy, Registry, RegistryError};
use crate::union::live::{LayerStatus, LiveUnion};
use crate::union::UnionError;
use crate::view::ImageView;

/// FUSE worker threads: reads of different files wait on the network in parallel.
const FUSE_THREADS: usize = 8;

/// Settings for a mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Platform from an index.
    pub platform: Platform,
    /// Registry settings.
    pub client: ClientOptions,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// How long a read waits for a missing chunk.
    pub fetch_timeout: Duration,
    /// Keep the cache's chunks within this many bytes (least recently used go first).
    pub cache_max_bytes: Option<u64>,
    /// A writable layer on top, if any.
    pub upper: Option<UpperOptions>,
    /// Ask the kernel for FUSE passthrough (reads and writes of local files bypass lamina).
    pub passthrough: bool,
    /// Fetch ahead of dense readers in blob order.
    pub readahead: bool,
    /// Prefetch the image's access profile (the cache's, else the registry's).
    pub profile: bool,
    /// When the registry is asked (`--pull`): with `Never`, not at all.
    pub pull: PullPolicy,
    /// Serve only the image's first this many layers (`--layers`): the snapshot of one layer
    /// of a chain, as the containerd snapshotter mounts it.
    pub layers: Option<usize>,
}

/// Where a writable mount keeps its changes.
#[derive(Debug, Clone)]
pub struct UpperOptions {
    /// The upper directory (see [`crate::upper`]).
    pub dir: PathBuf,
    /// Remove it when the mount ends (`--writable` without `--keep`).
    pub remove_at_end: bool,
    /// Make metacopy files for metadata-only changes, if the upper is new (an existing one
    /// keeps its recorded choice).
    pub metacopy: bool,
    /// Kernel overlayfs over the read-only view, or lamina's own overlay.
    pub backend: stacked::Backend,
}

/// A mount could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A TOC failed.
    #[error(transparent)]
    Locate(#[from] LocateError),
    /// The layers could not be merged.
    #[error(transparent)]
    Union(#[from] UnionError),
    /// A plain layer could not be streamed and indexed.
    #[error("plain layer {0}")]
    Plain(String),
    /// Local trouble.
    #[error("{0}")]
    Local(String),
}

/// Everything a mount serves.
pub struct Prepared {
    /// Layer indexes, bottom first (empty for a layer still to be streamed).
    pub layers: Vec<LayerIndex>,
    /// Where each layer's chunks come from.
    pub sources: Vec<LayerSource>,
    /// Plain layers to stream once the mount is up.
    pub streams: Vec<stream::LayerStream>,
    /// The cache directory.
    pub cache: CacheDir,
    /// Its chunk store.
    pub store: ChunkStore,
    /// Digest of the image manifest.
    pub manifest_digest: crate::digest::Digest,
    /// The image's access profile in the cache, if there is one.
    pub profile: Option<crate::profile::Profile>,
    /// Each layer's uncompressed digest (the config's `diff_ids`), bottom first.
    pub diff_ids: Vec<crate::digest::Digest>,
}

/// Resolve and index an image.
pub async fn prepare(reference: &ImageRef, options: &MountOptions) -> Result<Prepared, MountError> {
    let not_cached = |l: &crate::registry::resolve::Layer, what: &str| {
        MountError::Registry(RegistryError::NotCached {
            reference: reference.to_string(),
            what: format!("{what} {}", l.digest),
        })
    };
    let registry = Arc::new(Registry::new(
        &reference.registry,
        reference.api_host(),
        &options.client,
    )?);
    let cache = CacheDir::open(&options.cache_dir)
        .map_err(|e| MountError::Local(format!("cache {}: {e}", options.cache_dir.display())))?;
    // Manifests and configs by digest come from the cache: a warm mount by digest sends nothing.
    let mut image = resolve_image_with(&registry, reference, &options.platform, Some(&cache), options.pull).await?;
    if let Some(n) = options.layers {
        if n == 0 || n > image.layers.len() {
            return Err(MountError::Local(format!(
                "--layers {n}: the image has {} layers",
                image.layers.len()
            )));
        }
        image.layers.truncate(n);
    }
    let store = ChunkStore::open(&options.cache_dir)
        .map_err(|e| MountError::Local(format!("chunk store {}: {e}", options.cache_dir.display())))?;
    let gzip_indexes = crate::fetch::gzindex::for_mount(
        &registry,
        &reference.repository,
        &image.manifest_digest,
        &image.layers,
        &cache,
        options.pull != PullPolicy::Never,
    )
    .await;
    let gzip_indexes = &gzip_indexes;
    let indexes = futures_util::future::join_all(image.layers.iter().map(|l| {
        let (registry, cache, store) = (registry.clone(), cache.clone(), &store);
        async move {
            if let Some(gz) = gzip_indexes.get(&l.digest) {
                let source = crate::fetch::gzindex::deflate_source(&cache, gz, l);
                return Ok(Some((gz.index.clone(), source)));
            }
            let no_points = || None;
            let path = cache.index_path(&l.digest);
            let toc_digest = crate::fetch::locate::annotated_toc_digest(l);
            let cached = disk::load(&path)
                .ok()
                .filter(|_| cache.index_toc_matches(&l.digest, toc_digest));
            if let Some(index) = cached {
                // A plain layer has no random access: if any of its chunks left the cache, the
                // layer is streamed again (its files are served as the stream passes them).
                if index.codec != crate::model::ChunkCodec::Stream
                    || index
                        .chunks
                        .iter()
                        .all(|c| c.kind == ChunkKind::Zeros || store.contains(&c.digest))
                {
                    return Ok(Some((index, no_points())));
                }
                if options.pull == PullPolicy::Never {
                    return Err(not_cached(l, "plain layer whose chunks left the cache"));
                }
                tracing::info!(layer = %l.digest, "plain layer: some of its chunks left the cache; streaming it again");
                return Ok(None);
            }
            if options.pull == PullPolicy::Never {
                return Err(not_cached(l, "layer index"));
            }
            let toc = read_layer_toc(&registry, &reference.repository, l).await?;
            let Some(index) = toc.index else {
                return Ok(None); // plain: streamed once the mount is up
            };
            if let Err(e) = disk::save(&index, &path) {
                tracing::warn!(error = %e, "could not keep the layer index");
            }
            cache.record_index_toc(&l.digest, toc_digest);
            Ok(Some((index, no_points())))
        }
    }))
    .await;
    let found = indexes.into_iter().collect::<Result<Vec<_>, MountError>>()?;
    let mut streams = Vec::new();
    let mut layers = Vec::with_capacity(found.len());
    let mut checkpoints = Vec::with_capacity(found.len());
    for (i, (index, l)) in found.into_iter().zip(&image.layers).enumerate() {
        let (index, points) = match index {
            Some((index, points)) => (Some(index), points),
            None => (None, None),
        };
        checkpoints.push(points);
        layers.push(index.unwrap_or_else(|| {
            streams.push(stream::LayerStream {
                index: i,
                layer: l.clone(),
                registry: registry.clone(),
                repo: reference.repository.clone(),
            });
            LayerIndex {
                codec: crate::model::ChunkCodec::Stream,
                ..LayerIndex::default()
            }
        }));
    }
    for (ix, l) in layers.iter().zip(&image.layers) {
        for (entry, e) in crate::format::chunk::refused_entries(ix) {
            tracing::warn!(layer = %l.digest, entry = %entry, error = %e, "a chunk is over a cap: reads of this file fail with EIO");
        }
    }
    let sources = image
        .layers
        .iter()
        .zip(&layers)
        .zip(checkpoints)
        .map(|((l, ix), deflate)| LayerSource {
            registry: registry.clone(),
            repo: reference.repository.clone(),
            digest: l.digest.clone(),
            codec: ix.codec,
            deflate,
        })
        .collect();
    let profile = crate::profile::load(&options.cache_dir, &image.manifest_digest);
    Ok(Prepared {
        layers,
        sources,
        streams,
        cache,
        store,
        manifest_digest: image.manifest_digest.clone(),
        profile,
        diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
    })
}

/// What a running mount publishes for `lamina stats`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MountState {
    /// The image.
    pub image: String,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The daemon's pid.
    pub pid: u32,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// Counters.
    pub stats: crate::fetch::StatsSnapshot,
    /// Each layer's state, bottom first: `indexed`, `streaming`, or `failed: why`.
    #[serde(default)]
    pub layer_status: Vec<String>,
    /// The upper directory of a writable mount.
    #[serde(default)]
    pub upper: Option<PathBuf>,
    /// Requests answered per host: hosts.toml mirrors by host, the registry by its name.
    #[serde(default)]
    pub requests_by_host: Vec<(String, u64)>,
    /// What serves a writable mount: `kernel overlayfs` or `lamina`.
    #[serde(default)]
    pub overlay: Option<String>,
}

/// How often a mount's state file is rewritten.
const STATE_INTERVAL: Duration = Duration::from_millis(500);
/// How often a mount merges what it recorded into the cached access profile.
const PROFILE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a mount with a cache quota collects.
const GC_INTERVAL: Duration = Duration::from_secs(30);

/// The state file of the mount at `mountpoint`.
pub fn state_path(cache_dir: &Path, mountpoint: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let key = crate::digest::Digest::of(canonical.as_os_str().as_encoded_bytes());
    cache_dir.join("mounts").join(format!("{}.json", &key.hex()[..16]))
}

fn write_state(path: &Path, state: &MountState) {
    let tmp = path.with_extension("partial");
    if let Ok(text) = serde_json::to_vec_pretty(state) {
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// Serve `prepared` at `mountpoint` until it is unmounted. `ready` is told once the mount is
/// live (or why it failed).
pub fn serve(
    image: &str,
    prepared: Prepared,
    mountpoint: &Path,
    options: &MountOptions,
    runtime: tokio::runtime::Handle,
    ready: impl FnOnce(Result<(), String>),
) -> std::io::Result<()> {
    let cache = prepared.cache;
    let fetcher = Fetcher::new(runtime.clone(), prepared.store, options.fetch_timeout);
    let layer_digests: Vec<String> = prepared.sources.iter().map(|s| s.digest.to_string()).collect();
    let mut streaming = vec![false; prepared.layers.len()];
    for s in &prepared.streams {
        streaming[s.index] = true;
    }
    let live = match LiveUnion::new(prepared.layers, &streaming, options.fetch_timeout) {
        Ok(u) => Arc::new(u),
        Err(e) => {
            ready(Err(e.to_string()));
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()));
        }
    };
    let mut view = ImageView::new(live.clone(), prepared.sources.clone(), fetcher.clone());
    if !options.readahead {
        view = view.without_readahead();
    }
    let view = Arc::new(view);
    let recording = Arc::new(profiling::Recording::new(
        prepared.profile.clone(),
        options.cache_dir.clone(),
        prepared.manifest_digest.clone(),
        layer_digests.clone(),
        view.clone(),
    ));
    // The upper directory of a stacked mount, held (with its lock) while the mount lives.
    let mut stacked_upper = None;
    let mut overlay = None;
    let spawned = match &options.upper {
        None => fuser::spawn_mount(read_only_fs(&view, options), mountpoint, &fuse_config(false)),
        Some(u) => {
            let identity = crate::upper::Identity {
                image: image.to_string(),
                manifest: Some(prepared.manifest_digest.to_string()),
                layers: layer_digests.clone(),
                metacopy: u.metacopy,
            };
            let root = live.read(|st| {
                let r = st.union.node(crate::union::ROOT_INO);
                (r.mode, r.uid, r.gid)
            });
            let upper = match crate::upper::UpperDir::open(&u.dir, &identity, root) {
                Ok(upper) => upper,
                Err(e) => {
                    ready(Err(e.to_string()));
                    return Err(std::io::Error::other(e.to_string()));
                }
            };
            let kernel = match u.backend.tries_kernel() {
                false => None,
                true => match serve_stacked(&view, &upper, mountpoint, options) {
                    Ok(session) => Some(Ok(session)),
                    Err(e) if u.backend == stacked::Backend::Auto => {
                        tracing::warn!(error = %e, "kernel overlayfs failed: the writable layer is served by lamina");
                        None
                    }
                    Err(e) => Some(Err(std::io::Error::other(e))),
                },
            };
            match kernel {
                Some(session) => {
                    stacked_upper = Some(upper);
                    overlay = Some("kernel overlayfs");
                    session
                }
                None => {
                    overlay = Some("lamina");
                    crate::overlay::OverlayFs::new(view.clone(), upper, options.passthrough)
                        .and_then(|ofs| fuser::spawn_mount(ofs, mountpoint, &fuse_config(true)))
                }
            }
        }
    };
    match spawned {
        Ok(session) => {
            for s in prepared.streams {
                let source = prepared.sources[s.index].clone();
                runtime.spawn(stream::run(s, live.clone(), cache.clone(), fetcher.clone(), source));
            }
            let state = state_path(&options.cache_dir, mountpoint);
            let _ = std::fs::create_dir_all(state.parent().expect("has a parent"));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // Ready once the state file is there, so `lamina stats` / `commit` right after
            // `lamina mount` find the mount.
            let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
            let publisher = {
                let (stop, state, image, mountpoint) =
                    (stop.clone(), state.clone(), image.to_string(), mountpoint.to_path_buf());
                let (fetcher, layer_digests, recording) = (fetcher.clone(), layer_digests.clone(), recording.clone());
                let (quota, cache_dir) = (options.cache_max_bytes, options.cache_dir.clone());
                let upper_dir = options.upper.as_ref().map(|u| u.dir.clone());
                let registry = prepared.sources.first().map(|s| s.registry.clone());
                std::thread::spawn(move || {
                    let mut last_gc = std::time::Instant::now() - GC_INTERVAL;
                    let mut last_profile = std::time::Instant::now();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if last_profile.elapsed() >= PROFILE_INTERVAL {
                            recording.flush();
                            last_profile = std::time::Instant::now();
                        }
                        if let Some(max) = quota.filter(|_| last_gc.elapsed() >= GC_INTERVAL) {
                            let c = crate::cache::gc::collect(&cache_dir, max);
                            if c.chunks > 0 {
                                tracing::info!(
                                    chunks = c.chunks,
                                    bytes = c.bytes,
                                    "cache over its quota: evicted least recently used chunks"
                                );
                            }
                            last_gc = std::time::Instant::now();
                        }
                        let s = MountState {
                            image: image.clone(),
                            mountpoint: mountpoint.clone(),
                            pid: std::process::id(),
                            layers: layer_digests.clone(),
                            stats: fetcher.snapshot(),
                            layer_status: live
                                .statuses()
                                .into_iter()
                                .zip(&layer_digests)
                                .map(|(s, digest)| {
                                    let refused = digest.parse().ok().and_then(|d| fetcher.health.refusal(&d));
                                    match (s, refused) {
                                        (_, Some(why)) => format!("unavailable: {why}"),
                                        (LayerStatus::Complete, None) => "indexed".to_string(),
                                        (LayerStatus::Streaming, None) => "streaming".to_string(),
                                        (LayerStatus::Failed { reason, .. }, None) => format!("failed: {reason}"),
                                        (LayerStatus::Unavailable(reason), None) => format!("unavailable: {reason}"),
                                    }
                                })
                                .collect(),
                            upper: upper_dir.clone(),
                            requests_by_host: registry.as_ref().map(|r| r.requests_by_host()).unwrap_or_default(),
                            overlay: overlay.map(str::to_string),
                        };
                        write_state(&state, &s);
                        let _ = first_tx.send(());
                        std::thread::sleep(STATE_INTERVAL);
                    }
                    recording.flush();
                })
            };
            let _ = first_rx.recv_timeout(Duration::from_secs(5));
            ready(Ok(()));
            if options.profile {
                match &prepared.profile {
                    None if options.pull == PullPolicy::Never => {}
                    Some(p) => profiling::prefetch(p, &view, &fetcher, &prepared.sources, &layer_digests),
                    // None in the cache: ask the registry, off the start-up path.
                    None => {
                        if let Some(first) = prepared.sources.first() {
                            let (registry, repo) = (first.registry.clone(), first.repo.clone());
                            let (image, view, fetcher) =
                                (prepared.manifest_digest.clone(), view.clone(), fetcher.clone());
                            let (sources, digests, recording) =
                                (prepared.sources.clone(), layer_digests.clone(), recording.clone());
                            runtime.spawn(async move {
                                if let Some(p) = profiling::find_in_registry(&registry, &repo, &image).await {
                                    profiling::prefetch(&p, &view, &fetcher, &sources, &digests);
                                    recording.set_base(p);
                                }
                            });
                        }
                    }
                }
            }
            let result = session.join();
            if let Some(u) = &stacked_upper {
                // The view's session ended under a kernel overlayfs still mounted (its
                // connection was aborted): the overlay goes too, before the upper's lock.
                if let Some(point) = crate::upper::overlay_on(&u.path().join("upper")) {
                    tracing::warn!(mount = %point.display(), "the read-only view ended under the overlay: unmounting it");
                    let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
                }
            }
            drop(stacked_upper);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = publisher.join();
            let _ = std::fs::remove_file(&state);
            if let Some(u) = options.upper.as_ref().filter(|u| u.remove_at_end) {
                if let Err(e) = std::fs::remove_dir_all(&u.dir) {
                    tracing::warn!(dir = %u.dir.display(), error = %e, "could not remove the writable layer");
                }
            }
            result
        }
        Err(e) => {
            ready(Err(format!("mounting on {}: {e}", mountpoint.display())));
            Err(e)
        }
    }
}

/// The FUSE settings of a mount: read-write for lamina's own overlay, else read-only.
fn fuse_config(writable: bool) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        if writable { MountOption::RW } else { MountOption::RO },
        MountOption::FSName("lamina".into()),
        MountOption::Subtype("lamina".into()),
        MountOption::DefaultPermissions,
    ];
    if rustix::process::geteuid().is_root() {
        config.mount_options.extend([MountOption::Dev, MountOption::Suid]);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(FUSE_THREADS);
    config
}

/// The read-only FUSE adapter over `view`.
fn read_only_fs(view: &Arc<ImageView>, options: &MountOptions) -> ImageFs {
    let fs = ImageFs::new(view.clone());
    if options.passthrough {
        fs
    } else {
        fs.without_passthrough()
    }
}

/// A writable mount as kernel overlayfs over the read-only view ([`stacked`]): the view is
/// mounted in the upper directory for the moment overlayfs takes it.
fn serve_stacked(
    view: &Arc<ImageView>,
    upper: &crate::upper::UpperDir,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<fuser::BackgroundSession, String> {
    // Made here, never taken as found (opening the upper emptied its tmp/).
    let lower = stacked::lower_point(upper);
    std::fs::create_dir(&lower).map_err(|e| format!("{}: {e}", lower.display()))?;
    let session = fuser::spawn_mount(read_only_fs(view, options), &lower, &fuse_config(false)).map_err(|e| {
        let _ = std::fs::remove_dir(&lower);
        format!("the read-only view at {}: {e}", lower.display())
    })?;
    match stacked::mount_over(&lower, upper, mountpoint) {
        Ok(()) => Ok(session),
        Err(e) => {
            // The view left the tree with nothing above it: its session ends by itself, not
            // waited for (something may still hold it).
            drop(session);
            Err(e)
        }
    }
}

/// Unmount (lazily, so a dead daemon's mount goes too).
pub fn unmount(mountpoint: &Path) -> Result<(), String> {
    if rustix::process::geteuid().is_root() {
        return rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()));
    }
    let out = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .output()
        .map_err(|e| format!("running fusermount3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fusermount3 -u {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
