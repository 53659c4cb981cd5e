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
//! only ever wait (with a deadline), never drive the network; nothing unverified is stored;
//! a chunk over a cap ([`crate::format::chunk::check_limits`]) is refused before any request
//! or allocation; decoding and hashing run on the blocking pool, streamed into the store's
//! temporary file, never on the async workers, by at most [`store_slots`] threads at once;
//! every flight is settled, also when the task
//! fetching it panics or is dropped ([`FlightGuard`]). Chunks of zeros are never fetched nor
//! stored: a read fills them in.
//! Chunks asked for together whose compressed bytes are neighbours in the blob are fetched
//! with one Range request ([`super::runs`]).
//! Not yet here (DESIGN.md): priorities between demand reads and prefetch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::health::Health;
use super::prefetch::Prefetch;
use super::runs::merge_runs;
use super::shared::{ChunkLock, ChunkLocks};
use super::stats::{FetchStats, MAX_LATENCY_SAMPLES};
use super::store::store_slots;
use crate::cache::chunks::ChunkStore;
use crate::digest::Digest;
use crate::format::chunk::check_limits;
use crate::model::{Chunk, ChunkCodec, ChunkKind};
use crate::registry::Registry;

/// Default time a read waits for a missing chunk before failing with EIO.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries per chunk when the bytes arrive but do not verify.
const VERIFY_ATTEMPTS: u32 = 3;
/// Flights a read may wait on before it gives up on a failing chunk (within its deadline).
const FLIGHT_ATTEMPTS: u32 = 3;
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
    /// A gzip layer's index checkpoints and chunks by checkpoint ([`ChunkCodec::Deflate`]).
    pub deflate: Option<Arc<super::deflate::DeflateSource>>,
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
    /// The index makes the chunk impossible to fetch (over a cap): no use trying again.
    #[error("chunk refused: {0}")]
    Refused(String),
}

#[derive(Default)]
pub(super) struct Flight {
    pub(super) result: Mutex<Option<Result<(), FetchError>>>,
    pub(super) done: Condvar,
    /// The machine-wide lock of the chunk while this process fetches it.
    pub(super) lock: Mutex<Option<ChunkLock>>,
}

/// A flight the holder must settle. Dropped unsettled (the task fetching it panicked, or
/// was cancelled), it settles the flight with an error, so no chunk stays in flight forever.
pub(super) struct FlightGuard {
    fetcher: Arc<Fetcher>,
    chunk: Chunk,
    flight: Arc<Flight>,
    settled: bool,
}

impl FlightGuard {
    pub(super) fn new(fetcher: &Arc<Fetcher>, chunk: Chunk, flight: Arc<Flight>) -> FlightGuard {
        FlightGuard {
            fetcher: fetcher.clone(),
            chunk,
            flight,
            settled: false,
        }
    }

    /// Record the outcome and wake the waiters.
    pub(super) fn settle(mut self, result: Result<(), FetchError>) {
        self.settled = true;
        self.fetcher.settle(&self.chunk, &self.flight, result);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.settled {
            let e = FetchError::Failed("the fetch ended without an outcome".into());
            self.fetcher.settle(&self.chunk, &self.flight, Err(e));
        }
    }
}

/// Brings chunks into the store.
pub struct Fetcher {
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) store: ChunkStore,
    pub(super) locks: ChunkLocks,
    pub(super) inflight: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    pub(super) timeout: Duration,
    /// Counters.
    pub stats: FetchStats,
    /// Prefetch: permits and used / wasted bytes.
    pub prefetch: Prefetch,
    /// Layers refused for good; whether the registry is away.
    pub health: Health,
    /// Chunks being decoded and stored ([`store_slots`]).
    pub(super) storing: Arc<tokio::sync::Semaphore>,
}

impl Fetcher {
    /// A fetcher running its requests on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle, store: ChunkStore, timeout: Duration) -> Arc<Fetcher> {
        let locks = ChunkLocks::open(&store.cache_root()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no chunk locks: daemons sharing this cache may fetch a chunk twice");
            ChunkLocks::disabled()
        });
        Arc::new(Fetcher {
            runtime,
            store,
            locks,
            inflight: Mutex::new(HashMap::new()),
            timeout,
            stats: FetchStats::default(),
            prefetch: Prefetch::default(),
            health: Health::default(),
            storing: Arc::new(tokio::sync::Semaphore::new(store_slots())),
        })
    }

    /// The chunk store.
    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Whether `chunk` is neither stored nor on its way (zeros are never missing).
    pub fn is_missing(&self, chunk: &Chunk) -> bool {
        chunk.kind == ChunkKind::Data
            && !self.store.contains(&chunk.digest)
            && !self.inflight.lock().contains_key(&chunk.digest)
    }

    /// Make sure `chunk` is in the store; blocks the calling (non-async) thread up to the
    /// deadline.
    pub fn ensure(self: &Arc<Self>, layer: &LayerSource, chunk: &Chunk) -> Result<(), FetchError> {
        self.ensure_all(layer, std::slice::from_ref(chunk), 1)
    }

    /// Make sure the first `wait_for` chunks of `chunks` (in blob order) are in the store,
    /// fetching every missing one of `chunks` with as few requests as their positions allow
    /// (the rest is read-ahead: fetched in the same requests, not waited for); blocks up to
    /// one deadline.
    pub fn ensure_all(
        self: &Arc<Self>,
        layer: &LayerSource,
        chunks: &[Chunk],
        wait_for: usize,
    ) -> Result<(), FetchError> {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(waited) = self.fallback_wait(layer, chunks, wait_for, deadline) {
                return waited;
            }
            match self.ensure_once(layer, chunks, wait_for, deadline) {
                // A flight that failed may have been another reader's, started before the
                // registry came back: try afresh while this read's deadline allows; a layer
                // that fell back to streaming (a wrong gzip index) is waited for at the top.
                Err(FetchError::Failed(_)) if attempt < FLIGHT_ATTEMPTS && Instant::now() < deadline => continue,
                Err(FetchError::Failed(_)) if self.falls_back(layer) => continue,
                Err(FetchError::Failed(e)) if self.fall_back_after_failed_read(layer, &e) => continue,
                r => return r,
            }
        }
    }

    fn ensure_once(
        self: &Arc<Self>,
        layer: &LayerSource,
        chunks: &[Chunk],
        wait_for: usize,
        deadline: Instant,
    ) -> Result<(), FetchError> {
        let expanded;
        let chunks = match &layer.deflate {
            Some(d) => {
                expanded = d.expand(chunks, wait_for, |c| !self.store.contains(&c.digest));
                &expanded[..]
            }
            None => chunks,
        };
        let mut waits = Vec::new();
        let mut mine: Vec<(Chunk, Arc<Flight>)> = Vec::new();
        // Whether the network may be tried, asked at the first chunk that needs it.
        let mut network: Option<bool> = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let needed = i < wait_for;
            if needed {
                self.prefetch.note_demand(&chunk.digest);
            }
            if chunk.kind == ChunkKind::Zeros {
                continue;
            }
            if let Err(e) = check_limits(chunk) {
                if needed {
                    return Err(FetchError::Refused(format!("layer {}: {e}", layer.digest)));
                }
                continue;
            }
            if self.store.contains(&chunk.digest) {
                if needed {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    self.prefetch.note_used(&chunk.digest);
                }
                continue;
            }
            if layer.codec == ChunkCodec::Stream {
                return Err(FetchError::Failed(format!(
                    "layer {} has no random access and its chunk left the cache; mount the image again",
                    layer.digest
                )));
            }
            // The needed chunks come first: a read that cannot have its own fails here, before
            // any flight is started; read-ahead just stops.
            if network.is_none() {
                let checked = self.health.check(&layer.digest);
                if needed {
                    checked.clone()?;
                }
                network = Some(checked.is_ok());
            }
            if network == Some(false) {
                break;
            }
            let mut map = self.inflight.lock();
            match map.get(&chunk.digest) {
                Some(f) if needed => {
                    self.prefetch.note_used(&chunk.digest);
                    waits.push(f.clone())
                }
                Some(_) => {}
                None => {
                    let f = Arc::new(Flight::default());
                    map.insert(chunk.digest, f.clone());
                    if needed {
                        waits.push(f.clone());
                    }
                    mine.push((chunk.clone(), f));
                    self.take_overtaken(layer, chunk, &mut map, &mut mine);
                }
            }
        }
        let mut mine = self.claim(layer, mine, deadline);
        mine.sort_by_key(|(c, _)| (c.blob_offset, c.inner_offset));
        for run in merge_runs(mine) {
            self.runtime.spawn(self.clone().fetch_run(layer.clone(), run));
        }
        let waited_from = Instant::now();
        let any_wait = !waits.is_empty();
        for flight in waits {
            let mut result = flight.result.lock();
            while result.is_none() {
                if flight.done.wait_until(&mut result, deadline).timed_out() {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(FetchError::Timeout(self.timeout));
                }
            }
            result.clone().expect("checked above")?;
        }
        if any_wait {
            let mut samples = self.stats.wait_micros.lock();
            if samples.len() >= MAX_LATENCY_SAMPLES {
                samples.drain(..MAX_LATENCY_SAMPLES / 2);
            }
            samples.push(waited_from.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        Ok(())
    }

    /// Fetch a run of neighbouring chunks with one request, settling each chunk's flight as
    /// soon as its bytes have arrived and verified (a read waiting for the first chunk of a
    /// long run does not wait for the rest). A chunk that does not verify is fetched again on
    /// its own; when the request fails or stalls, the chunks not yet settled fail. Chunks over
    /// a cap are refused before the request.
    pub(super) async fn fetch_run(self: Arc<Self>, layer: LayerSource, run: Vec<(Chunk, Arc<Flight>)>) {
        let mut guarded = Vec::with_capacity(run.len());
        for (chunk, flight) in run {
            let guard = FlightGuard::new(&self, chunk.clone(), flight);
            match check_limits(&chunk) {
                Ok(()) => guarded.push((chunk, guard)),
                Err(e) => guard.settle(Err(FetchError::Refused(format!("layer {}: {e}", layer.digest)))),
            }
        }
        let Some(start) = guarded.first().map(|(c, _)| c.blob_offset) else {
            return;
        };
        let end = guarded
            .iter()
            .map(|(c, _)| c.blob_offset + c.blob_len)
            .max()
            .expect("runs are not empty");
        self.warm_windows(&layer, guarded.iter().map(|(c, _)| c.blob_offset));
        let mut pending: std::collections::VecDeque<_> = guarded.into();
        let outcome = self.stream_run(&layer, start, end, &mut pending).await;
        for (_, guard) in pending {
            guard.settle(match &outcome {
                Ok(()) => Err(FetchError::Failed("the range ended before this chunk".into())),
                Err(e) => Err(e.clone()),
            });
        }
    }

    /// Stream bytes `start..end` of the layer blob, handing the chunks of `pending` (in blob
    /// order) to the blocking pool to be decoded and stored as their bytes complete. Stops at
    /// the first error or stall.
    async fn stream_run(
        self: &Arc<Self>,
        layer: &LayerSource,
        start: u64,
        end: u64,
        pending: &mut std::collections::VecDeque<(Chunk, FlightGuard)>,
    ) -> Result<(), FetchError> {
        let failed = |e: String| FetchError::Failed(e);
        let stall = |_| FetchError::Failed(format!("no bytes within {:?}", self.timeout));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.count(layer, 1, 0, 0);
        let request = layer
            .registry
            .blob_range_stream(&layer.repo, &layer.digest, start, end - start);
        let mut stream = self.answered(layer, tokio::time::timeout(self.timeout, request).await)?;
        let mut buf = bytes::BytesMut::new();
        let mut buf_offset = start;
        while !pending.is_empty() {
            let piece = match tokio::time::timeout(self.timeout, stream.next()).await {
                Err(_) => {
                    self.health.unreachable("a response stopped in the middle");
                    return Err(stall(()));
                }
                Ok(r) => r.map_err(|e| failed(e.to_string()))?,
            };
            let Some(piece) = piece else { break };
            self.stats
                .fetched_bytes
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
            self.count(layer, 0, piece.len() as u64, 0);
            buf.extend_from_slice(&piece);
            while let Some((chunk, _)) = pending.front() {
                if layer.deflate.is_some() {
                    // A checkpoint's chunks go together, inflated in one pass.
                    let start = chunk.blob_offset;
                    let n = pending.iter().take_while(|(c, _)| c.blob_offset == start).count();
                    let end = pending.iter().take(n).map(|(c, _)| c.blob_offset + c.blob_len).max();
                    let end = end.expect("one at least") - buf_offset;
                    if end > buf.len() as u64 {
                        break;
                    }
                    let mut group: Vec<_> = pending.drain(..n).collect();
                    group.sort_by_key(|(c, _)| c.inner_offset);
                    let raw = bytes::Bytes::copy_from_slice(&buf[(start - buf_offset) as usize..end as usize]);
                    let keep_from = pending
                        .front()
                        .map_or(end, |(c, _)| (c.blob_offset - buf_offset).min(end));
                    let _ = buf.split_to(keep_from as usize);
                    buf_offset += keep_from;
                    // No slot: inflating a checkpoint may wait for its window from the registry.
                    let (me, layer) = (self.clone(), layer.clone());
                    tokio::task::spawn_blocking(move || me.store_group(layer, group, raw));
                    continue;
                }
                let (from, to) = (
                    chunk.blob_offset - buf_offset,
                    chunk.blob_offset + chunk.blob_len - buf_offset,
                );
                if to > buf.len() as u64 {
                    break;
                }
                let (chunk, guard) = pending.pop_front().expect("peeked");
                let next_start = pending.front().map(|(c, _)| c.blob_offset);
                let raw = if next_start.is_some_and(|n| n < chunk.blob_offset + chunk.blob_len) {
                    // The next chunk needs some of these bytes too (a gzip index's chunks
                    // share checkpoints): copy, and drop only what no later chunk needs.
                    let raw = bytes::Bytes::copy_from_slice(&buf[from as usize..to as usize]);
                    let keep_from = next_start.expect("checked") - buf_offset;
                    let _ = buf.split_to(keep_from as usize);
                    buf_offset += keep_from;
                    raw
                } else {
                    // The gap before the chunk goes; its bytes are handed over without a copy.
                    let _ = buf.split_to(from as usize);
                    let raw = buf.split_to((to - from) as usize).freeze();
                    buf_offset += to;
                    raw
                };
                let (me, layer, slot) = (self.clone(), layer.clone(), self.store_slot().await);
                tokio::task::spawn_blocking(move || me.store_or_refetch(layer, chunk, guard, raw, slot));
            }
        }
        Ok(())
    }

    /// Record a chunk's outcome (the first one counts) and wake its waiters.
    pub(super) fn settle(&self, chunk: &Chunk, flight: &Flight, result: Result<(), FetchError>) {
        {
            let mut slot = flight.result.lock();
            if slot.is_some() {
                return;
            }
            *slot = Some(result);
        }
        flight.done.notify_all();
        {
            // Only this flight: a later one for the same chunk may have replaced it.
            let mut map = self.inflight.lock();
            if map
                .get(&chunk.digest)
                .is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), flight))
            {
                map.remove(&chunk.digest);
            }
        }
        drop(flight.lock.lock().take());
    }

    /// Fetch one chunk on its own, again while its bytes do not verify.
    pub(super) async fn fetch(self: &Arc<Self>, layer: &LayerSource, chunk: &Chunk) -> Result<(), FetchError> {
        check_limits(chunk).map_err(|e| FetchError::Refused(format!("layer {}: {e}", layer.digest)))?;
        let mut last = String::new();
        for _ in 0..VERIFY_ATTEMPTS {
            let bytes = self.range(layer, chunk.blob_offset, chunk.blob_len).await?;
            let slot = match layer.deflate {
                None => Some(self.store_slot().await),
                Some(_) => None,
            };
            let (me, l, c) = (self.clone(), layer.clone(), chunk.clone());
            let decoded = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                me.store_chunk(&l, &c, &bytes)
            })
            .await
            .map_err(|e| FetchError::Failed(format!("decoding the chunk failed: {e}")))?;
            match decoded {
                Ok(stored) => return stored,
                Err(e) => {
                    tracing::warn!(layer = %layer.digest, error = %e, "chunk did not verify; fetching again");
                    layer.registry.distrust(&layer.digest);
                    last = e.to_string();
                }
            }
        }
        Err(FetchError::Failed(format!("layer {}: {last}", layer.digest)))
    }

    /// One Range request, counted, and given up at the read deadline so a stalled connection
    /// never holds a chunk's flight: the next read starts afresh.
    async fn range(&self, layer: &LayerSource, start: u64, len: u64) -> Result<bytes::Bytes, FetchError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = layer.registry.blob_range(&layer.repo, &layer.digest, start, len);
        let bytes = self.answered(layer, tokio::time::timeout(self.timeout, request).await)?;
        self.stats
            .fetched_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.count(layer, 1, bytes.len() as u64, 0);
        Ok(bytes)
    }

    /// A request's outcome (given up at the deadline), told to the registry's [`Health`].
    fn answered<T>(
        &self,
        layer: &LayerSource,
        outcome: Result<Result<T, crate::registry::RegistryError>, tokio::time::error::Elapsed>,
    ) -> Result<T, FetchError> {
        match outcome {
            Err(_) => {
                self.health.unreachable("no answer in time");
                Err(FetchError::Failed(format!("no answer within {:?}", self.timeout)))
            }
            Ok(Err(e)) => {
                self.health.failed(&layer.digest, &e);
                Err(FetchError::Failed(e.to_string()))
            }
            Ok(Ok(v)) => {
                self.health.answered();
                Ok(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::runs::tests::chunk;

    #[test]
    fn a_flight_whose_fetch_panics_is_settled_with_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let fetcher = Fetcher::new(runtime.handle().clone(), store, Duration::from_secs(5));
        let (c, ()) = chunk(0, 10);
        let flight = Arc::new(Flight::default());
        fetcher.inflight.lock().insert(c.digest, flight.clone());
        let guard = FlightGuard::new(&fetcher, c.clone(), flight.clone());
        let task = runtime.spawn(async move {
            let _guard = guard;
            panic!("a bug while fetching");
        });
        assert!(runtime.block_on(task).is_err());
        let result = flight.result.lock().clone();
        assert!(matches!(result, Some(Err(FetchError::Failed(_)))), "{result:?}");
        assert!(!fetcher.inflight.lock().contains_key(&c.digest), "still in flight");
        // A guard settled by hand keeps its outcome, and never removes a later flight.
        let later = Arc::new(Flight::default());
        fetcher.inflight.lock().insert(c.digest, later.clone());
        FlightGuard::new(&fetcher, c.clone(), flight.clone()).settle(Ok(()));
        assert!(matches!(flight.result.lock().clone(), Some(Err(_))));
        assert!(fetcher.inflight.lock().contains_key(&c.digest));
    }
}
