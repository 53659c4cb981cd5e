//! Prefetch: chunks fetched before anyone reads them (read-ahead windows, access profiles).
//!
//! Demand reads always come first: a prefetch request registers its chunks' flights only when
//! it starts (so a read never waits behind a queued prefetch: it starts its own request), and
//! at most [`PREFETCH_REQUESTS`] read-ahead and [`PROFILE_REQUESTS`] profile requests are in
//! flight at once, leaving room on the link for demand requests. A read that overtakes a
//! queued request (a fast reader, a slow pipeline) takes the rest of it, from its own chunk
//! on, into its own request ([`Fetcher::take_overtaken`]): one large request, not one small
//! one per chunk read. Every prefetched chunk is remembered until a read uses it, which gives
//! the used / wasted figures of `lamina stats`.
//!
//! An access profile is followed only while the workload follows it: every chunk a read needs
//! counts as on the profile or off it, and once [`STRAY_CHUNKS`] reads went off the profile
//! with fewer than one in [`STRAY_RATIO`] on it, the workload is evidently not the one that was
//! recorded and the profile's requests not yet sent are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::fetcher::{Fetcher, Flight, LayerSource};
use super::runs::merge_runs;
use super::shared::Locked;
use crate::model::{Chunk, ChunkCodec, ChunkKind};

/// Prefetch requests in flight at once: enough to fill a link's bandwidth-delay product with
/// 4 MiB requests, few enough that demand requests still get their share of the link.
pub const PREFETCH_REQUESTS: usize = 4;
/// Access-profile requests in flight at once. Profiles have their own permits: a long
/// profile queued at mount must not hold back the read-ahead of the readers that run now.
pub const PROFILE_REQUESTS: usize = 2;

/// Chunks read off the profile before the profile can be judged not followed.
pub const STRAY_CHUNKS: u64 = 64;
/// A profile is not followed when fewer than one in this many chunks read are on it.
pub const STRAY_RATIO: u64 = 4;

/// Whether the workload follows the access profile that is prefetched.
#[derive(Default)]
struct ProfileWatch {
    /// The profile's chunks.
    chunks: HashSet<[u8; 32]>,
    /// Chunks reads needed that the profile lists.
    on: u64,
    /// Chunks reads needed that it does not.
    off: u64,
}

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
    /// Set when the workload did not follow the access profile and its prefetch stopped.
    pub profile_stopped: AtomicBool,
    /// Chunks the access profile listed (0: no profile was used).
    pub profile_chunks: AtomicU64,
}

/// The prefetch side of a fetcher.
pub struct Prefetch {
    /// Read-ahead requests allowed in flight.
    permits: Arc<tokio::sync::Semaphore>,
    /// Profile requests allowed in flight.
    profile_permits: Arc<tokio::sync::Semaphore>,
    /// Prefetched chunks no read has used yet, with their lengths.
    unused: Mutex<HashMap<[u8; 32], u64>>,
    /// The access profile being prefetched, while it is judged.
    watch: Mutex<Option<ProfileWatch>>,
    /// Requests waiting for a permit, by their chunks (with their layer's blob).
    queued: Mutex<HashMap<[u8; 32], Queued>>,
    /// Counters.
    pub stats: PrefetchStats,
}

/// The chunks of one queued prefetch request, in blob order.
type QueuedRun = Arc<Vec<Chunk>>;

/// A queued request, as one of its chunks finds it: its layer's blob, its class, its chunks.
type Queued = (crate::digest::Digest, Class, QueuedRun);

/// The most compressed bytes a read takes from a queued request it overtakes (the largest
/// request): other reads that need those chunks then wait for them to stream in, as they
/// would for the read-ahead request itself.
const MAX_TAKEN_BYTES: u64 = super::runs::MAX_MERGE_BYTES;

impl Default for Prefetch {
    fn default() -> Self {
        Prefetch {
            permits: Arc::new(tokio::sync::Semaphore::new(PREFETCH_REQUESTS)),
            profile_permits: Arc::new(tokio::sync::Semaphore::new(PROFILE_REQUESTS)),
            unused: Mutex::new(HashMap::new()),
            watch: Mutex::new(None),
            queued: Mutex::new(HashMap::new()),
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

    /// `run` of `layer` waits for a permit.
    fn enqueue(&self, layer: &crate::digest::Digest, class: Class, run: &QueuedRun) {
        let mut queued = self.queued.lock();
        for c in run.iter() {
            queued.insert(c.digest, (layer.clone(), class, run.clone()));
        }
    }

    /// The chunks of `run` (from `from` on) no longer wait: they are fetched, or skipped.
    fn dequeue(queued: &mut HashMap<[u8; 32], Queued>, run: &QueuedRun, from: usize) {
        for c in &run[from..] {
            if queued.get(&c.digest).is_some_and(|(_, _, r)| Arc::ptr_eq(r, run)) {
                queued.remove(&c.digest);
            }
        }
    }

    /// A chunk was fetched by prefetch.
    pub(super) fn record(&self, digest: [u8; 32], len: u64) {
        if self.unused.lock().insert(digest, len).is_none() {
            self.stats.bytes.fetch_add(len, Ordering::Relaxed);
            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An access profile listing `chunks` is about to be prefetched: judge from now on
    /// whether reads follow it.
    pub fn watch_profile(&self, chunks: impl IntoIterator<Item = [u8; 32]>) {
        let mut w = self.watch.lock();
        let w = w.get_or_insert_with(ProfileWatch::default);
        let before = w.chunks.len();
        w.chunks.extend(chunks);
        self.stats
            .profile_chunks
            .fetch_add((w.chunks.len() - before) as u64, Ordering::Relaxed);
    }

    /// A read needs this chunk (whether the store has it or not): one more sign of whether
    /// the workload follows the profile.
    pub(super) fn note_demand(&self, digest: &[u8; 32]) {
        // Every read passes here: without a profile being judged, no lock is taken.
        if self.stats.profile_chunks.load(Ordering::Relaxed) == 0 || self.stats.profile_stopped.load(Ordering::Relaxed)
        {
            return;
        }
        let mut guard = self.watch.lock();
        let Some(w) = guard.as_mut() else {
            return;
        };
        if w.chunks.contains(digest) {
            w.on += 1;
        } else {
            w.off += 1;
        }
        if w.off >= STRAY_CHUNKS && w.on * STRAY_RATIO < w.off {
            tracing::warn!(
                on_profile = w.on,
                off_profile = w.off,
                "the workload does not follow the access profile: its prefetch stops"
            );
            self.stats.profile_stopped.store(true, Ordering::Relaxed);
            *guard = None;
        }
    }

    /// Whether prefetch of `class` goes on.
    fn goes_on(&self, class: Class) -> bool {
        class != Class::Profile || !self.stats.profile_stopped.load(Ordering::Relaxed)
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
        let runs: Vec<QueuedRun> = merge_runs(chunks.into_iter().map(|c| (c, ())).collect())
            .into_iter()
            .map(|run| Arc::new(run.into_iter().map(|(c, ())| c).collect()))
            .collect();
        for run in &runs {
            self.prefetch.enqueue(&layer.digest, class, run);
        }
        self.runtime.spawn(async move {
            for run in runs {
                let handed = run.len() as u64;
                let permit = me.prefetch.permits(class).acquire_owned().await;
                Prefetch::dequeue(&mut me.prefetch.queued.lock(), &run, 0);
                let permit = match permit {
                    Ok(p) if me.prefetch.goes_on(class) => p,
                    _ => {
                        me.prefetch.stats.pending.fetch_sub(handed, Ordering::Relaxed);
                        continue;
                    }
                };
                // Flights are registered only now: a read that came first started its own
                // (and took the rest of the run with it).
                let missing: Vec<Chunk> = run
                    .iter()
                    .filter(|c| c.kind == ChunkKind::Data && !me.store.contains(&c.digest))
                    .cloned()
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

impl Fetcher {
    /// A read needs `chunk` of `layer`, which nobody fetches yet: if a queued prefetch request
    /// holds it, the request's chunks after it join the read's request (registered in
    /// `inflight` and pushed to `mine`, not waited for), and the queued request will skip them.
    pub(super) fn take_overtaken(
        &self,
        layer: &LayerSource,
        chunk: &Chunk,
        inflight: &mut HashMap<[u8; 32], Arc<Flight>>,
        mine: &mut Vec<(Chunk, Arc<Flight>)>,
    ) {
        if layer.deflate.is_some() {
            // A gzip index's requests are whole checkpoints, planned by its `expand`.
            return;
        }
        let mut queued = self.prefetch.queued.lock();
        // A stopped profile's requests are dropped, not taken.
        let Some((_, _, run)) = queued
            .get(&chunk.digest)
            .filter(|(l, class, _)| *l == layer.digest && self.prefetch.goes_on(*class))
        else {
            return;
        };
        let run = run.clone();
        let at = run.iter().position(|c| c.digest == chunk.digest).unwrap_or(run.len());
        let limit = chunk.blob_offset + MAX_TAKEN_BYTES;
        let to = at + run[at..].iter().take_while(|c| c.blob_offset < limit).count();
        let taken = Arc::new(run[at..to].to_vec());
        for c in taken.iter() {
            if queued.get(&c.digest).is_some_and(|(_, _, r)| Arc::ptr_eq(r, &run)) {
                queued.remove(&c.digest);
            }
        }
        drop(queued);
        for c in taken.iter().skip(1) {
            if c.kind == ChunkKind::Data && !inflight.contains_key(&c.digest) && !self.store.contains(&c.digest) {
                let f = Arc::new(Flight::default());
                inflight.insert(c.digest, f.clone());
                self.prefetch.record(c.digest, c.len);
                mine.push((c.clone(), f));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u64) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&i.to_le_bytes());
        d
    }

    #[test]
    fn a_profile_is_dropped_once_reads_stray_from_it() {
        let p = Prefetch::default();
        p.watch_profile((0..100).map(d));
        // Reads that follow the profile, then some off it: still followed.
        for i in 0..20 {
            p.note_demand(&d(i));
        }
        for i in 0..STRAY_CHUNKS {
            p.note_demand(&d(1000 + i));
        }
        assert!(p.goes_on(Class::Profile));
        // Reads far off it: prefetch of the profile stops, read-ahead goes on.
        for i in 0..STRAY_CHUNKS * 2 {
            p.note_demand(&d(2000 + i));
        }
        assert!(!p.goes_on(Class::Profile));
        assert!(p.goes_on(Class::Readahead));
        assert!(p.stats.profile_stopped.load(Ordering::Relaxed));
    }

    #[test]
    fn without_a_profile_nothing_is_judged() {
        let p = Prefetch::default();
        for i in 0..STRAY_CHUNKS * 4 {
            p.note_demand(&d(i));
        }
        assert!(p.goes_on(Class::Profile));
    }
}
