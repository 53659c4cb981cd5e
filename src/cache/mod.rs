//! lamina's local cache directory, shared by every command and daemon on the machine.
//!
//! ```text
//! CACHE/
//!   blobs/sha256/<hex>              whole blobs lamina wrote (converted layers) and the manifests,
//!                                   indexes and configs of mounted images (documents.rs), by digest
//!   conversions/<src-hex>.<opts>.json   source layer → converted layer record
//!   indexes/<layer-hex>.lidx            a layer's index (index::disk format), built from its TOC
//!   chunks/sha256/ab/<hex>             one uncompressed chunk, named by its sha256 (chunks.rs)
//!   files/sha256/ab/<hex>              a multi-chunk file assembled whole, named by its sha256
//!   mounts/<key>.json                  a running mount's counters (lamina stats)
//!   tmp/                            work files, renamed into place when complete
//! ```
//!
//! Invariant: a file under `blobs/` always has the digest in its name (written under `tmp/`,
//! verified, then renamed); a conversion record names a blob that was complete when written.

pub mod chunks;
pub mod documents;
pub mod gc;

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Environment variable naming the cache directory.
pub const CACHE_DIR_ENV: &str = "LAMINA_CACHE_DIR";

/// The cache directory: `--cache-dir`, else `$LAMINA_CACHE_DIR`, else `/var/lib/lamina` for
/// root and `$XDG_CACHE_HOME/lamina` (or `~/.cache/lamina`) otherwise.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CACHE_DIR_ENV) {
        return PathBuf::from(d);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/lamina");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("lamina");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from("/tmp/lamina-cache"),
        |h| PathBuf::from(h).join(".cache/lamina"),
    )
}

/// An opened cache directory.
#[derive(Clone, Debug)]
pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    /// Open (creating) the cache at `root`.
    pub fn open(root: &Path) -> std::io::Result<CacheDir> {
        for sub in ["blobs/sha256", "conversions", "indexes", "tmp"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(CacheDir {
            root: root.to_path_buf(),
        })
    }

    /// Where a whole blob with this digest lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob is kept.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// A fresh work file name under `tmp/`.
    pub fn temp_path(&self, hint: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join("tmp").join(format!("{hint}.{}.{n}", std::process::id()))
    }

    /// Where the index of a layer is kept.
    pub fn index_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("indexes").join(format!("{}.lidx", layer.hex()))
    }

    /// Where the gzip index of a layer is kept (`lamina index`).
    pub fn gzip_index_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("gzindex").join(format!("{}.lgzi", layer.hex()))
    }

    /// Record the TOC digest (the manifest's annotation) a cached index of `layer` was made
    /// from: a layer digest alone is never checked lazily, so another manifest naming the same
    /// digest with another TOC must not be served this index (nor this one its).
    pub fn record_index_toc(&self, layer: &Digest, toc: Option<&str>) {
        let path = self.index_path(layer).with_extension("toc");
        let _ = match toc {
            Some(t) => std::fs::write(&path, t),
            None => std::fs::remove_file(&path),
        };
    }

    /// Whether the cached index of `layer` may serve a manifest whose annotation names TOC
    /// `toc`: yes without an annotation (the TOC is found in the blob itself), else only if
    /// the index was made from that TOC.
    pub fn index_toc_matches(&self, layer: &Digest, toc: Option<&str>) -> bool {
        match toc {
            None => true,
            Some(t) => std::fs::read_to_string(self.index_path(layer).with_extension("toc")).is_ok_and(|r| r == t),
        }
    }

    /// The record of a conversion of `source` with settings `fingerprint`.
    pub fn conversion_path(&self, source: &Digest, fingerprint: &str) -> PathBuf {
        self.root
            .join("conversions")
            .join(format!("{}.{fingerprint}.json", source.hex()))
    }
}
