//! `lamina pull IMAGE DIR`: the full pull, and the baseline lazy mounting is measured against.
//!
//! ```text
//! resolve ──► N downloads (parallel, bounded, resumable) ──► spool files
//!                                                              │ read while still arriving
//!             applier thread: layer 0, 1, … in order ◄─────────┘
//!               sniff compression ─► decompress ─► hash (diff_id) ─► apply ─► staging dir
//! success: verify every digest, rename staging → DIR          failure: staging removed
//! ```
//!
//! Invariants: DIR appears only complete and verified (the tree is built in a sibling staging
//! directory and renamed into place); memory stays bounded whatever the layer size (streams
//! and fixed buffers only); compressed blobs live on disk only until their layer is applied.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::{Applier, ApplyError, ApplyOptions, LayerStats};
use crate::digest::{Digest, HashingReader};
use crate::format::compression::decompressor;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::blob::{download_layer, Spool};
use crate::registry::manifest::Platform;
use crate::registry::resolve::{resolve_image, Layer};
use crate::registry::{ClientOptions, Registry, RegistryError};

/// Downloads running at once by default: enough to fill a link, few enough to keep the
/// applier's next layers arriving in order.
pub const DEFAULT_PARALLEL_DOWNLOADS: usize = 4;

/// A pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A layer could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The uncompressed layer does not match the config's diff_id.
    #[error(
        "layer {layer}: uncompressed content digest {actual} does not match diff_id {expected} from the image config"
    )]
    DiffId {
        /// The layer blob digest.
        layer: Digest,
        /// The config's diff_id.
        expected: Digest,
        /// What the uncompressed stream hashed to.
        actual: Digest,
    },
    /// The destination cannot be used.
    #[error("destination {path}: {reason}")]
    Destination {
        /// The destination.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Local I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Settings for a pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Platform picked from a multi-platform index.
    pub platform: Platform,
    /// Registry client settings.
    pub client: ClientOptions,
    /// Downloads at once.
    pub parallel_downloads: usize,
    /// Show progress bars (on a terminal).
    pub progress: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            client: ClientOptions::default(),
            parallel_downloads: DEFAULT_PARALLEL_DOWNLOADS,
            progress: false,
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullReport {
    /// The image as resolved.
    pub reference: String,
    /// Digest of the image manifest pulled.
    pub manifest_digest: Digest,
    /// Number of layers.
    pub layers: usize,
    /// Compressed bytes downloaded.
    pub compressed_bytes: u64,
    /// Uncompressed tar bytes applied.
    pub tar_bytes: u64,
    /// Regular-file bytes written.
    pub file_bytes: u64,
    /// Entries applied.
    pub entries: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Requests the registry (and its mirrors) answered.
    pub requests: u64,
}

/// Pull `reference` into `dest`, which must not exist or be an empty directory.
pub async fn pull(reference: &ImageRef, dest: &Path, options: &PullOptions) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let staging = Staging::prepare(dest)?;
    let registry = Arc::new(Registry::new(
        &reference.registry,
        reference.api_host(),
        &options.client,
    )?);
    let image = resolve_image(&registry, reference, &options.platform).await?;
    tracing::info!(image = %reference, manifest = %image.manifest_digest, layers = image.layers.len(), "resolved");

    let progress = Progress::new(options.progress);
    let spools = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, _)| Spool::create(&staging.blobs.join(format!("layer-{i}"))))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| PullError::Io {
            what: format!("creating download files in {}", staging.blobs.display()),
            source,
        })?;

    let limit = Arc::new(tokio::sync::Semaphore::new(options.parallel_downloads.max(1)));
    let mut downloads = Vec::new();
    for (layer, spool) in image.layers.iter().zip(&spools) {
        let bar = progress.bytes(short(&layer.digest), layer.size);
        let (registry, limit, spool) = (registry.clone(), limit.clone(), spool.clone());
        let (repo, layer) = (reference.repository.clone(), layer.clone());
        downloads.push(tokio::spawn(async move {
            let guard = spool.guard();
            let _permit = limit.acquire_owned().await.expect("the semaphore is never closed");
            guard.disarm(); // download_layer guards the spool from here on
            let result = download_layer(registry, repo, layer, spool, |n| bar.set_position(n)).await;
            bar.finish();
            result
        }));
    }

    let apply_bar = progress.count("applied".into(), image.layers.len() as u64);
    let layers = image.layers.clone();
    let root = staging.root.clone();
    let applied = tokio::task::spawn_blocking(move || apply_all(&root, &layers, &spools, &apply_bar)).await;
    let applied = match applied {
        Ok(r) => r,
        Err(e) => Err(PullError::Io {
            what: "the layer applier".into(),
            source: io::Error::other(e.to_string()),
        }),
    };
    let stats = match applied {
        Ok(stats) => stats,
        Err(e) => {
            // Prefer the download's own error: it says why the bytes were missing or wrong.
            for d in &downloads {
                d.abort();
            }
            for d in downloads {
                if let Ok(Err(download_error)) = d.await {
                    return Err(download_error.into());
                }
            }
            return Err(e);
        }
    };
    for d in downloads {
        d.await.map_err(|e| PullError::Io {
            what: "a download task".into(),
            source: io::Error::other(e.to_string()),
        })??;
    }
    staging.commit(dest)?;
    Ok(PullReport {
        reference: reference.to_string(),
        manifest_digest: image.manifest_digest.clone(),
        layers: image.layers.len(),
        compressed_bytes: image.layers.iter().map(|l| l.size).sum(),
        tar_bytes: stats.iter().map(|s| s.tar_bytes).sum(),
        file_bytes: stats.iter().map(|s| s.file_bytes).sum(),
        entries: stats.iter().map(|s| s.entries).sum(),
        elapsed: started.elapsed(),
        requests: registry.requests_by_host().iter().map(|(_, n)| n).sum(),
    })
}

/// Apply every layer in order from its spool, checking each diff_id.
fn apply_all(
    root: &Path,
    layers: &[Layer],
    spools: &[Arc<Spool>],
    bar: &indicatif::ProgressBar,
) -> Result<Vec<LayerStats>, PullError> {
    let mut applier = Applier::new(root, ApplyOptions::default()).map_err(|source| PullError::Io {
        what: format!("opening {}", root.display()),
        source,
    })?;
    let mut all = Vec::with_capacity(layers.len());
    for (layer, spool) in layers.iter().zip(spools) {
        let reader = spool.reader().map_err(|source| PullError::Io {
            what: format!("opening {}", spool.path().display()),
            source,
        })?;
        let tar = decompressor(reader, layer.compression).map_err(|source| PullError::Io {
            what: format!("layer {}: starting decompression", layer.digest),
            source,
        })?;
        let mut hashing = HashingReader::new(tar);
        let stats = applier.apply_layer(&layer.digest.to_string(), &mut hashing)?;
        let (actual, _) = hashing.finish();
        if actual != layer.diff_id {
            return Err(PullError::DiffId {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual,
            });
        }
        let _ = std::fs::remove_file(spool.path());
        bar.inc(1);
        all.push(stats);
    }
    bar.finish();
    Ok(all)
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

/// The sibling directories a pull builds in; removed on drop unless committed.
struct Staging {
    root: PathBuf,
    blobs: PathBuf,
    committed: bool,
}

impl Staging {
    fn prepare(dest: &Path) -> Result<Staging, PullError> {
        let bad = |reason: String| PullError::Destination {
            path: dest.to_path_buf(),
            reason,
        };
        match std::fs::symlink_metadata(dest) {
            Ok(m) if !m.is_dir() => return Err(bad("exists and is not a directory".into())),
            Ok(_) => {
                let mut it = std::fs::read_dir(dest).map_err(|e| bad(e.to_string()))?;
                if it.next().is_some() {
                    return Err(bad("exists and is not empty".into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        let name = dest.file_name().ok_or_else(|| bad("has no final name".into()))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| bad(format!("creating parent: {e}")))?;
        let tag = format!("{}.lamina-{}", name.to_string_lossy(), std::process::id());
        let staging = Staging {
            root: parent.join(format!(".{tag}.partial")),
            blobs: parent.join(format!(".{tag}.blobs")),
            committed: false,
        };
        for d in [&staging.root, &staging.blobs] {
            std::fs::create_dir(d).map_err(|e| bad(format!("creating {}: {e}", d.display())))?;
        }
        Ok(staging)
    }

    /// Move the finished tree into place.
    fn commit(mut self, dest: &Path) -> Result<(), PullError> {
        let io = |what: String| move |source| PullError::Io { what, source };
        if dest.exists() {
            std::fs::remove_dir(dest).map_err(io(format!("replacing empty {}", dest.display())))?;
        }
        std::fs::rename(&self.root, dest).map_err(io(format!("moving the tree to {}", dest.display())))?;
        self.committed = true;
        let _ = std::fs::remove_dir_all(&self.blobs);
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.blobs);
        if !self.committed {
            if let Err(e) = std::fs::remove_dir_all(&self.root) {
                tracing::warn!(path = %self.root.display(), error = %e, "could not remove the partial tree");
            }
        }
    }
}
