//! A fetcher's counters: per layer, chunk waits, prefetch; what `lamina stats` shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::fetcher::{Fetcher, LayerSource};

/// Most chunk-wait samples kept for the latency percentiles.
pub(super) const MAX_LATENCY_SAMPLES: usize = 100_000;

/// Per-layer counters.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LayerCounters {
    /// Range requests made.
    pub requests: u64,
    /// Compressed bytes fetched.
    pub bytes: u64,
    /// Chunks stored.
    pub chunks: u64,
}

/// Counters, for `lamina stats` and the benchmarks.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Per layer blob digest.
    pub layers: Mutex<HashMap<String, LayerCounters>>,
    /// How long reads waited for missing chunks, in microseconds (most recent samples).
    pub wait_micros: Mutex<Vec<u32>>,
    /// Chunks found in the store.
    pub hits: AtomicU64,
    /// Chunks fetched.
    pub fetched_chunks: AtomicU64,
    /// Compressed bytes fetched.
    pub fetched_bytes: AtomicU64,
    /// Range requests made.
    pub requests: AtomicU64,
    /// Waits that hit the deadline.
    pub timeouts: AtomicU64,
}

/// A snapshot of a mount's counters, as written to its state file.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Chunks found in the store.
    pub hits: u64,
    /// Chunks fetched.
    pub fetched_chunks: u64,
    /// Compressed bytes fetched.
    pub fetched_bytes: u64,
    /// Range requests.
    pub requests: u64,
    /// Reads that hit the deadline.
    pub timeouts: u64,
    /// Median wait for a missing chunk, microseconds.
    pub wait_p50_micros: u32,
    /// 99th percentile wait, microseconds.
    pub wait_p99_micros: u32,
    /// Per layer blob digest.
    pub layers: HashMap<String, LayerCounters>,
    /// Uncompressed bytes of chunks prefetched.
    #[serde(default)]
    pub prefetched_bytes: u64,
    /// Of those, bytes a read has used.
    #[serde(default)]
    pub prefetch_used_bytes: u64,
    /// Chunks handed to prefetch and not yet fetched or skipped.
    #[serde(default)]
    pub prefetch_pending_chunks: u64,
    /// Whether the access profile's prefetch stopped because reads did not follow it.
    #[serde(default)]
    pub profile_stopped: bool,
    /// Chunks the access profile listed (0: the mount used no profile).
    #[serde(default)]
    pub profile_chunks: u64,
}

impl Fetcher {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut waits = self.stats.wait_micros.lock().clone();
        waits.sort_unstable();
        let pct = |p: usize| {
            if waits.is_empty() {
                0
            } else {
                waits[(waits.len() - 1) * p / 100]
            }
        };
        StatsSnapshot {
            hits: self.stats.hits.load(Ordering::Relaxed),
            fetched_chunks: self.stats.fetched_chunks.load(Ordering::Relaxed),
            fetched_bytes: self.stats.fetched_bytes.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
            timeouts: self.stats.timeouts.load(Ordering::Relaxed),
            wait_p50_micros: pct(50),
            wait_p99_micros: pct(99),
            layers: self.stats.layers.lock().clone(),
            prefetched_bytes: self.prefetch.stats.bytes.load(Ordering::Relaxed),
            prefetch_used_bytes: self.prefetch.stats.used_bytes.load(Ordering::Relaxed),
            prefetch_pending_chunks: self.prefetch.stats.pending.load(Ordering::Relaxed),
            profile_stopped: self.prefetch.stats.profile_stopped.load(Ordering::Relaxed),
            profile_chunks: self.prefetch.stats.profile_chunks.load(Ordering::Relaxed),
        }
    }

    /// Download `layer` whole into `spool` (from `registry`'s `repo`) on the runtime, counted
    /// for `source` as one request and its bytes as they arrive: a plain layer's stream, and
    /// the stream a wrong gzip index falls back to.
    pub fn download_counted(
        self: &std::sync::Arc<Self>,
        source: &LayerSource,
        (registry, repo): (std::sync::Arc<crate::registry::Registry>, String),
        layer: crate::registry::resolve::Layer,
        spool: std::sync::Arc<crate::registry::blob::Spool>,
    ) -> tokio::task::JoinHandle<Result<(), crate::registry::RegistryError>> {
        let counted = {
            let (fetcher, source) = (self.clone(), source.clone());
            let last = AtomicU64::new(0);
            move |total: u64| {
                let before = last.swap(total, Ordering::Relaxed);
                fetcher.count(&source, 0, total.saturating_sub(before), 0);
            }
        };
        self.count(source, 1, 0, 0);
        self.runtime.spawn(crate::registry::blob::download_layer(
            registry, repo, layer, spool, counted,
        ))
    }

    /// Count work done for `layer` (by the fetcher, or by a layer stream).
    pub fn count(&self, layer: &LayerSource, requests: u64, bytes: u64, chunks: u64) {
        let mut map = self.stats.layers.lock();
        let c = map.entry(layer.digest.to_string()).or_default();
        c.requests += requests;
        c.bytes += bytes;
        c.chunks += chunks;
    }
}
