//! The fetcher: brings a chunk from the registry into the chunk store, once.
//!
//! ```text
//! FUSE thread ── ensure(chunk) ──► in store? ── yes ──► done (hit)
//!                                    │ no
//!                                    ▼
//!               in flight already? ── yes ──► wait on that flight (deadline)
//!                                    │ no
//!                                    ▼
//!               start a flight on the tokio runtime: Range GET ─► decode ─► verify ─► store
//!               and wait on it (deadline); a flight that outlives its waiters still fills the store
//! ```
//!
//! Invariants: one request in flight per chunk, whatever the number of readers; FUSE threads
//! only ever wait (with a deadline), never drive the network; nothing unverified is stored.
//! Not yet here (DESIGN.md): merging neighbouring chunks into one request, priorities.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::cache::chunks::ChunkStore;
use crate::digest::Digest;
use crate::format::chunk::{decode_chunk, ChunkCodec, ChunkError};
use crate::index::{Chunk, ChunkKind};
use crate::registry::Registry;

/// Default time a read waits for a missing chunk before failing with EIO.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries per chunk when the bytes arrive but do not verify.
const VERIFY_ATTEMPTS: u32 = 3;

/// Where one layer's blob is.
#[derive(Clone)]
pub struct LayerSource {
    /// The registry client.
    pub registry: Arc<Registry>,
    /// The repository.
    pub repo: String,
    /// The blob.
    pub digest: Digest,
    /// How its chunks are compressed.
    pub codec: ChunkCodec,
}

/// Why a chunk is not available.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Not fetched before the deadline.
    #[error("chunk not fetched within {0:?}")]
    Timeout(Duration),
    /// The registry failed, or the bytes never verified.
    #[error("fetching chunk: {0}")]
    Failed(String),
}

/// Counters, for `lamina stats` and the benchmarks.
#[derive(Debug, Default)]
pub struct FetchStats {
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

#[derive(Default)]
struct Flight {
    result: Mutex<Option<Result<(), FetchError>>>,
    done: Condvar,
}

/// Brings chunks into the store.
pub struct Fetcher {
    runtime: tokio::runtime::Handle,
    store: ChunkStore,
    inflight: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    timeout: Duration,
    /// Counters.
    pub stats: FetchStats,
}

impl Fetcher {
    /// A fetcher running its requests on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle, store: ChunkStore, timeout: Duration) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            runtime,
            store,
            inflight: Mutex::new(HashMap::new()),
            timeout,
            stats: FetchStats::default(),
        })
    }

    /// The chunk store.
    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Make sure `chunk` is in the store; blocks the calling (non-async) thread up to the
    /// deadline.
    pub fn ensure(self: &Arc<Self>, layer: &LayerSource, chunk: &Chunk) -> Result<(), FetchError> {
        if self.store.contains(&chunk.digest) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if chunk.kind == ChunkKind::Zeros {
            let zeros = vec![0u8; chunk.len as usize];
            return self
                .store
                .put(&chunk.digest, &zeros)
                .map_err(|e| FetchError::Failed(e.to_string()));
        }
        let (flight, leader) = {
            let mut map = self.inflight.lock();
            match map.get(&chunk.digest) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    map.insert(chunk.digest, f.clone());
                    (f, true)
                }
            }
        };
        if leader {
            let (me, layer, chunk, flight) = (self.clone(), layer.clone(), chunk.clone(), flight.clone());
            self.runtime.spawn(async move {
                let result = me.fetch(&layer, &chunk).await;
                *flight.result.lock() = Some(result);
                flight.done.notify_all();
                me.inflight.lock().remove(&chunk.digest);
            });
        }
        let deadline = Instant::now() + self.timeout;
        let mut result = flight.result.lock();
        while result.is_none() {
            if flight.done.wait_until(&mut result, deadline).timed_out() {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(FetchError::Timeout(self.timeout));
            }
        }
        result.clone().expect("checked above")
    }

    async fn fetch(&self, layer: &LayerSource, chunk: &Chunk) -> Result<(), FetchError> {
        let mut last = String::new();
        for _ in 0..VERIFY_ATTEMPTS {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let bytes = layer
                .registry
                .blob_range(&layer.repo, &layer.digest, chunk.blob_offset, chunk.blob_len)
                .await
                .map_err(|e| FetchError::Failed(e.to_string()))?;
            self.stats
                .fetched_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            match decode_chunk(layer.codec, chunk, &bytes) {
                Ok(data) => {
                    self.store
                        .put(&chunk.digest, &data)
                        .map_err(|e| FetchError::Failed(e.to_string()))?;
                    self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e @ (ChunkError::Digest { .. } | ChunkError::Decode { .. })) => {
                    tracing::warn!(layer = %layer.digest, error = %e, "chunk did not verify; fetching again");
                    last = e.to_string();
                }
            }
        }
        Err(FetchError::Failed(format!("layer {}: {last}", layer.digest)))
    }
}
