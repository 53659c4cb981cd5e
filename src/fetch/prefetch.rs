//! Prefetch: chunks fetched before anyone reads them (read-ahead windows, access profiles).
//!
//! Demand reads always come first: a prefetch request registers its chunks' flights only when
//! it starts (so a read never waits behind a queued prefetch: it starts its own request), and
//! at most [`PREFETCH_REQUESTS`] read-ahead and [`PROFILE_REQUESTS`] profile requests are in
//! flight at once, leaving room on the link for demand requests. Every prefetched chunk is remembered until a read uses it, which
//! gives the used / wasted figures of `lamina stats`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::fetcher::{merge_runs, Fetcher, Flight, LayerSource};
use super::shared::Locked;
use crate::model::{Chunk, ChunkCodec, ChunkKind};

/// Prefetch requests in flight at once: enough to fill a link's bandwidth-delay product with
/// 4 MiB requests, few enough that demand requests still get their share of the link.
pub const PREFETCH_REQUESTS: usize = 4;
/// Access-profile requests in flight at once. Profiles have their own permits: a long
/// profile queued at mount must not hold back the read-ahead of the readers that run now.
pub const PROFILE_REQUESTS: usize = 2;

/// Who asks for a prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Read-ahead of a reader that is running (blob order, visiting order).
    Readahead,
    /// An access profile, from the mount on.
    Profile,
}

/// What prefetch did, in uncompressed chunk bytes.
#[derive(Debug, Default)]
pub struct PrefetchStats {
    /// Bytes of chunks prefetched.
    pub bytes: AtomicU64,
    /// Of those, bytes a read has used since.
    pub used_bytes: AtomicU64,
    /// Chunks prefetched.
    pub chunks: AtomicU64,
    /// Chunks handed to prefetch and not yet fetched or skipped.
    pub pending: AtomicU64,
}

/// The prefetch side of a fetcher.
pub struct Prefetch {
    /// Read-ahead requests allowed in flight.
    permits: Arc<tokio::sync::Semaphore>,
    /// Profile requests allowed in flight.
    profile_permits: Arc<tokio::sync::Semaphore>,
    /// Prefetched chunks no read has used yet, with their lengths.
    unused: Mutex<HashMap<[u8; 32], u64>>,
    /// Counters.
    pub stats: PrefetchStats,
}

impl Default for Prefetch {
    fn default() -> Self {
        Prefetch {
            permits: Arc::new(tokio::sync::Semaphore::new(PREFETCH_REQUESTS)),
            profile_permits: Arc::new(tokio::sync::Semaphore::new(PROFILE_REQUESTS)),
            unused: Mutex::new(HashMap::new()),
            stats: PrefetchStats::default(),
        }
    }
}

impl Prefetch {
    /// The permits of `class`.
    pub(super) fn permits(&self, class: Class) -> Arc<tokio::sync::Semaphore> {
        match class {
            Class::Readahead => self.permits.clone(),
            Class::Profile => self.profile_permits.clone(),
        }
    }

    /// A chunk was fetched by prefetch.
    pub(super) fn record(&self, digest: [u8; 32], len: u64) {
        if self.unused.lock().insert(digest, len).is_none() {
            self.stats.bytes.fetch_add(len, Ordering::Relaxed);
            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A read needed this chunk: if prefetch brought it, it was worth it.
    pub fn note_used(&self, digest: &[u8; 32]) {
        if let Some(len) = self.unused.lock().remove(digest) {
            self.stats.used_bytes.fetch_add(len, Ordering::Relaxed);
        }
    }
}

impl Fetcher {
    /// Fetch `chunks` (in blob order) that nobody waits for yet, behind demand reads (see
    /// [`super::prefetch`]); returns at once.
    pub fn prefetch(self: &Arc<Self>, layer: &LayerSource, chunks: Vec<Chunk>, class: Class) {
        if chunks.is_empty() || layer.codec == ChunkCodec::Stream {
            return;
        }
        let (me, layer) = (self.clone(), layer.clone());
        self.prefetch
            .stats
            .pending
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        self.runtime.spawn(async move {
            let runs = merge_runs(chunks.into_iter().map(|c| (c, ())).collect());
            for run in runs {
                let Ok(permit) = me.prefetch.permits(class).acquire_owned().await else {
                    return;
                };
                let handed = run.len() as u64;
                // Flights are registered only now: a read that came first started its own.
                let missing: Vec<Chunk> = run
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| c.kind == ChunkKind::Data && !me.store.contains(&c.digest))
                    .collect();
                let mut mine: Vec<(Chunk, Arc<Flight>)> = Vec::new();
                {
                    let mut map = me.inflight.lock();
                    for c in missing {
                        if let std::collections::hash_map::Entry::Vacant(v) = map.entry(c.digest) {
                            // Another process fetching it: it will be in the store.
                            let Locked::Mine(lock) = me.locks.try_lock(&c.digest) else {
                                continue;
                            };
                            let f = Arc::new(Flight::default());
                            *f.lock.lock() = Some(lock);
                            v.insert(f.clone());
                            mine.push((c, f));
                        }
                    }
                }
                for (c, _) in &mine {
                    me.prefetch.record(c.digest, c.len);
                }
                let (me, layer) = (me.clone(), layer.clone());
                tokio::spawn(async move {
                    // Chunks already here split the run: its pieces go at once, not one after
                    // the other (a read waiting for a chunk of the last piece must not wait
                    // for the round trips of the others).
                    let pieces: Vec<_> = merge_runs(mine)
                        .into_iter()
                        .map(|sub| tokio::spawn(me.clone().fetch_run(layer.clone(), sub)))
                        .collect();
                    for p in pieces {
                        let _ = p.await;
                    }
                    me.prefetch.stats.pending.fetch_sub(handed, Ordering::Relaxed);
                    drop(permit);
                });
            }
        });
    }
}
