//! Serving a gzip layer through its index ([`ChunkCodec::Deflate`](crate::model::ChunkCodec)):
//! the unit fetched is a checkpoint's span, not a chunk. Every chunk that starts at one
//! checkpoint shares the compressed bytes before it, so a read of one of them brings the
//! others along ([`DeflateSource::expand`]), they travel in one request, and they are inflated
//! in one pass ([`Fetcher::store_group`]): each byte of the span is fetched and inflated once
//! however many files it holds, as a peer's span-based index would.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::fetcher::{FetchError, Fetcher, FlightGuard, LayerSource};
use crate::digest::Digest;
use crate::format::chunk::{check_limits, copy_verified, ChunkError};
use crate::format::gzip_index::{open_window, point_at, Point};
use crate::format::zran::{Checkpoint, Resume};
use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkKind};

/// A gzip layer's checkpoints, its data chunks by the checkpoint they start at, and where the
/// checkpoints' windows are: the cache's windows file (whole when this machine built the
/// index, filled as windows are read when it came from the registry), else the registry's
/// windows blob, one Range request per window, checked against the table's sha256.
#[derive(Debug)]
pub struct DeflateSource {
    /// Checkpoints in stream order.
    pub points: Vec<Point>,
    by_point: HashMap<u64, Vec<Chunk>>,
    /// Chunks inflated from these checkpoints that did not verify.
    bad: AtomicU32,
    /// The layer streamed whole instead, once the index proved wrong.
    fallback: Arc<super::fallback::Fallback>,
    windows_file: PathBuf,
    windows_blob: Digest,
    /// Windows read so far (one lock per checkpoint: a window is fetched once), or the last
    /// failure and when it came.
    windows: Vec<Mutex<Option<WindowSlot>>>,
}

type WindowSlot = Result<Arc<Vec<u8>>, (String, Instant)>;

/// How long a failed window fetch is answered from memory before it is tried again.
const WINDOW_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Chunks of a layer that may fail to verify before its index is given up: the layer then
/// streams ([`super::fallback`]) and the index is refused for later mounts of this cache. The
/// first failure leaves the mirrors out (their wrong bytes are fetched again from the registry);
/// an index whose windows are wrong fails every time.
const BAD_CHUNKS_BEFORE_FALLBACK: u32 = 2;

impl DeflateSource {
    /// For `layer`, whose index has codec Deflate, its windows in `windows_file` (the cache)
    /// or the registry's blob `windows_blob`; `spool` is where the layer is downloaded if the
    /// index proves wrong.
    pub fn new(
        layer: &crate::registry::resolve::Layer,
        points: Vec<Point>,
        index: &LayerIndex,
        (windows_file, windows_blob): (PathBuf, Digest),
        spool: PathBuf,
    ) -> DeflateSource {
        let mut by_point: HashMap<u64, Vec<Chunk>> = HashMap::new();
        let files = index.entries.iter().flat_map(|e| index.chunks_of(e));
        for c in files.filter(|c| c.kind == ChunkKind::Data) {
            by_point.entry(c.blob_offset).or_default().push(c.clone());
        }
        let windows = points.iter().map(|_| Mutex::new(None)).collect();
        DeflateSource {
            points,
            by_point,
            bad: AtomicU32::new(0),
            fallback: Arc::new(super::fallback::Fallback::new(layer.clone(), spool)),
            windows_file,
            windows_blob,
            windows,
        }
    }

    /// Whether the index proved wrong and the layer streams instead.
    pub fn falls_back(&self) -> bool {
        self.fallback.started()
    }

    /// `chunks` (the first `wait_for` needed) with, after the needed ones, every other chunk
    /// of the checkpoints of the needed ones that are `missing`: their bytes come with those
    /// anyway.
    pub fn expand(&self, chunks: &[Chunk], wait_for: usize, missing: impl Fn(&Chunk) -> bool) -> Vec<Chunk> {
        let needed = &chunks[..wait_for.min(chunks.len())];
        let mut seen: HashSet<[u8; 32]> = needed.iter().map(|c| c.digest).collect();
        let mut out = needed.to_vec();
        let mut starts: Vec<u64> = needed
            .iter()
            .filter(|c| c.kind == ChunkKind::Data && missing(c))
            .map(|c| c.blob_offset)
            .collect();
        starts.dedup();
        for start in starts {
            for c in self.by_point.get(&start).into_iter().flatten() {
                if seen.insert(c.digest) {
                    out.push(c.clone());
                }
            }
        }
        out.extend(chunks[needed.len()..].iter().filter(|c| seen.insert(c.digest)).cloned());
        out
    }
}

impl Fetcher {
    /// The checkpoint whose first byte is `start_byte`, with its window: from memory, the
    /// cache's windows file, else the registry (kept in the file). Blocks the calling
    /// (non-async) thread up to the read deadline. A fetch that failed is answered from memory
    /// for a second, so the readers queued on it do not each wait a deadline in turn.
    pub(super) fn checkpoint(&self, layer: &LayerSource, start_byte: u64) -> Result<Checkpoint, String> {
        let d = layer.deflate.as_ref().ok_or("not a gzip-index layer")?;
        let i = point_at(&d.points, start_byte).ok_or("no checkpoint starts at this chunk's offset")?;
        let point = &d.points[i];
        if point.window_len == 0 {
            return Ok(point.with_window(Vec::new()));
        }
        let mut slot = d.windows[i].lock();
        match slot.as_ref() {
            Some(Ok(w)) => return Ok(point.with_window(w.to_vec())),
            Some(Err((e, at))) if at.elapsed() < WINDOW_RETRY_AFTER => return Err(e.clone()),
            _ => {}
        }
        match self.read_window(layer, d, point) {
            Ok(window) => {
                let window = Arc::new(window);
                *slot = Some(Ok(window.clone()));
                Ok(point.with_window(window.to_vec()))
            }
            Err(e) => {
                *slot = Some(Err((e.clone(), Instant::now())));
                Err(e)
            }
        }
    }

    /// A window from the cache's windows file, else from the registry (then kept in the file).
    fn read_window(&self, layer: &LayerSource, d: &DeflateSource, point: &Point) -> Result<Vec<u8>, String> {
        let mut frame = vec![0u8; point.window_zlen as usize];
        let local = std::fs::File::open(&d.windows_file)
            .and_then(|f| f.read_exact_at(&mut frame, point.window_at))
            .ok()
            .and_then(|()| open_window(point, &frame).ok());
        if let Some(w) = local {
            return Ok(w);
        }
        let request = layer.registry.blob_range(
            &layer.repo,
            &d.windows_blob,
            point.window_at,
            u64::from(point.window_zlen),
        );
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let frame = self
            .runtime
            .block_on(tokio::time::timeout(self.timeout, request))
            .map_err(|_| format!("the window was not fetched within {:?}", self.timeout))?
            .map_err(|e| format!("fetching a window: {e}"))?;
        self.stats
            .fetched_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        let window = open_window(point, &frame)?;
        let kept = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&d.windows_file)
            .and_then(|f| f.write_all_at(&frame, point.window_at));
        if let Err(e) = kept {
            tracing::debug!(error = %e, "could not keep a window in the cache");
        }
        Ok(window)
    }

    /// Start reading the windows of the checkpoints at `starts` (on the blocking pool), so
    /// they are there when the chunks' bytes are.
    pub(super) fn warm_windows(self: &Arc<Self>, layer: &LayerSource, starts: impl Iterator<Item = u64>) {
        let Some(d) = &layer.deflate else { return };
        let mut seen = HashSet::new();
        for start in starts.filter(|s| seen.insert(*s)) {
            let cold = point_at(&d.points, start)
                .is_some_and(|i| d.points[i].window_len > 0 && d.windows[i].try_lock().is_some_and(|w| w.is_none()));
            if cold {
                let (me, layer) = (self.clone(), layer.clone());
                tokio::task::spawn_blocking(move || {
                    let _ = me.checkpoint(&layer, start);
                });
            }
        }
    }
}

impl Fetcher {
    /// On the blocking pool: inflate `group` (chunks of one checkpoint, sorted by inner
    /// offset) in one pass from `raw` (the blob from the checkpoint's first byte), storing
    /// each chunk as it passes and settling its flight. Chunks already stored are inflated past.
    pub(super) fn store_group(
        self: Arc<Self>,
        layer: LayerSource,
        group: Vec<(Chunk, FlightGuard)>,
        raw: bytes::Bytes,
    ) {
        let failed = |e: String| FetchError::Failed(format!("layer {}: {e}", layer.digest));
        let start = group.first().map(|(c, _)| c.blob_offset).unwrap_or(0);
        let resumed = self
            .checkpoint(&layer, start)
            .and_then(|p| Resume::new(p.bits, &p.window, &raw).map_err(|e| e.to_string()));
        let mut inflater = match resumed {
            Ok(r) => Counting { inner: r, count: 0 },
            Err(e) => {
                for (_, guard) in group {
                    guard.settle(Err(failed(e.clone())));
                }
                return;
            }
        };
        let mut broken: Option<String> = None;
        let me = &self;
        for (chunk, guard) in group {
            if let Some(e) = &broken {
                guard.settle(Err(failed(e.clone())));
                continue;
            }
            let skip = chunk.inner_offset.checked_sub(inflater.count);
            let outcome = match skip {
                None => Err(failed("chunks of one checkpoint overlap".into())),
                Some(skip) => match std::io::copy(&mut (&mut inflater).take(skip), &mut std::io::sink()) {
                    Ok(n) if n == skip => me.store_next(&layer, &chunk, &mut inflater),
                    Ok(_) => Err(failed("the stream ends before the chunk".into())),
                    Err(e) => Err(failed(e.to_string())),
                },
            };
            if let Err(FetchError::Failed(e)) = &outcome {
                // The stream cannot be trusted past a failure: the rest fail with it and are
                // fetched again by their readers.
                broken = Some(e.clone());
                layer.registry.distrust(&layer.digest);
            }
            guard.settle(outcome);
        }
    }

    /// Store the next chunk of the inflater (or inflate past it if it is stored already).
    fn store_next(
        self: &Arc<Self>,
        layer: &LayerSource,
        chunk: &Chunk,
        inflater: &mut Counting<Resume<'_>>,
    ) -> Result<(), FetchError> {
        let failed = |e: String| FetchError::Failed(format!("layer {}: {e}", layer.digest));
        if let Err(e) = check_limits(chunk) {
            return Err(FetchError::Refused(format!("layer {}: {e}", layer.digest)));
        }
        let before = inflater.count;
        let stored = self.store.put_from_checked(&chunk.digest, |out| {
            copy_verified(chunk, (&mut *inflater).take(chunk.len), out)
        });
        // Already stored: nothing was read; inflate past it.
        if inflater.count == before {
            let _ = std::io::copy(&mut (&mut *inflater).take(chunk.len), &mut std::io::sink());
        }
        match self.stored_outcome(layer, stored) {
            Ok(outcome) => outcome,
            Err(bad_bytes) => {
                self.note_bad_chunk(layer, &bad_bytes);
                Err(failed(bad_bytes.to_string()))
            }
        }
    }
}

impl Fetcher {
    /// A chunk inflated through the layer's index did not verify: at the second, the layer
    /// falls back to streaming for this mount and the index is refused for later mounts of this
    /// cache (they stream the layer, as without an index, until `lamina index` rebuilds it).
    fn note_bad_chunk(self: &Arc<Self>, layer: &LayerSource, e: &ChunkError) {
        let Some(d) = &layer.deflate else { return };
        let n = d.bad.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(layer = %layer.digest, error = %e, "a chunk inflated through the gzip index did not verify");
        if n == BAD_CHUNKS_BEFORE_FALLBACK {
            self.fall_back(layer, &format!("{n} chunks did not verify (last: {e})"));
        }
    }

    /// Stream `layer` instead of trusting its index, for this mount and later ones.
    fn fall_back(self: &Arc<Self>, layer: &LayerSource, why: &str) {
        let Some(d) = &layer.deflate else { return };
        d.fallback.start(self, layer);
        match super::gzindex::refuse(&self.store.cache_root(), &layer.digest, why) {
            Ok(()) => tracing::warn!(layer = %layer.digest, "{why}: the gzip index is refused; the layer streams"),
            Err(err) => tracing::warn!(layer = %layer.digest, error = %err, "could not record the refused gzip index"),
        }
    }

    /// A read of `layer` failed after all its attempts while a chunk inflated through the
    /// layer's index had already failed to verify: rather than fail the read, the layer falls
    /// back to streaming now (its retries may all have met that one bad flight, so the
    /// second bad chunk that would start it may never come). Whether it did.
    pub(super) fn fall_back_after_failed_read(self: &Arc<Self>, layer: &LayerSource, e: &str) -> bool {
        let Some(d) = &layer.deflate else { return false };
        if d.fallback.started() || d.bad.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.fall_back(layer, &format!("a read failed after a chunk did not verify ({e})"));
        true
    }

    /// Whether `layer` has a gzip index that proved wrong (it streams instead).
    pub(super) fn falls_back(&self, layer: &LayerSource) -> bool {
        layer.deflate.as_ref().is_some_and(|d| d.falls_back())
    }

    /// For a layer whose index proved wrong: wait until the fallback stream has stored the
    /// first `wait_for` of `chunks` (a stream that failed is started again). `None` while the
    /// index is trusted.
    pub(super) fn fallback_wait(
        self: &Arc<Self>,
        layer: &LayerSource,
        chunks: &[Chunk],
        wait_for: usize,
        deadline: Instant,
    ) -> Option<Result<(), FetchError>> {
        let d = layer.deflate.as_ref().filter(|d| d.fallback.started())?;
        let needed = chunks[..wait_for.min(chunks.len())].iter();
        let digests: Vec<[u8; 32]> = needed.filter(|c| c.kind == ChunkKind::Data).map(|c| c.digest).collect();
        if digests.iter().all(|c| self.store.contains(c)) {
            return Some(Ok(()));
        }
        d.fallback.start(self, layer);
        Some(d.fallback.wait(self, &digests, deadline))
    }
}

/// A reader that counts the bytes read through it.
pub(super) struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
