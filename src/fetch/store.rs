//! Storing a chunk whose bytes arrived: decoded, verified and streamed into the chunk store
//! on the blocking pool, by at most [`store_slots`] chunks at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::fetcher::{FetchError, Fetcher, FlightGuard, LayerSource};
use crate::format::chunk::{decode_chunk_from, ChunkError};
use crate::model::Chunk;

/// A slot to decode and store chunks in, held until they are stored.
pub(super) type Slot = tokio::sync::OwnedSemaphorePermit;

/// Chunks decoded and stored at once: one per core. A blocking thread per arriving chunk
/// was hundreds of threads on 2 cores, spinning on the store's directory locks; and a
/// response waits for a slot before it reads on, so the compressed bytes held are bounded.
/// Chunks of a gzip index take no slot: inflating one may wait for its checkpoint's window
/// from the registry, and a slot held across that would hold up every layer's chunks.
pub fn store_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)
}

impl Fetcher {
    /// On the blocking pool: decode, verify and store a chunk whose bytes arrived, and settle
    /// its flight; bytes that do not verify are fetched again on their own.
    /// The slot is held to the end: a slot given back while its thread is still busy makes
    /// the pool start another thread for the next chunk.
    pub(super) fn store_or_refetch(
        self: Arc<Self>,
        layer: LayerSource,
        chunk: Chunk,
        guard: FlightGuard,
        raw: bytes::Bytes,
        _slot: Slot,
    ) {
        let stored = self.store_chunk(&layer, &chunk, &raw);
        drop(raw);
        match stored {
            Ok(stored) => guard.settle(stored),
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %e, "chunk did not verify; fetching it again");
                layer.registry.distrust(&layer.digest);
                let me = self.clone();
                self.runtime.spawn(async move {
                    let result = me.fetch(&layer, &chunk).await;
                    guard.settle(result);
                });
            }
        }
    }

    /// Wait for a slot to decode and store a chunk in.
    pub(super) async fn store_slot(&self) -> Slot {
        self.storing
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Decode and verify one chunk from exactly its compressed bytes, streamed into the store
    /// (blocking: call it off the async workers). The outer error means the bytes were wrong
    /// (worth fetching again); the inner one, the chunk is refused or the store failed.
    pub(super) fn store_chunk(
        &self,
        layer: &LayerSource,
        chunk: &Chunk,
        raw: &[u8],
    ) -> Result<Result<(), FetchError>, ChunkError> {
        let failed = |e: String| FetchError::Failed(format!("layer {}: {e}", layer.digest));
        // A gzip-index chunk inflates from its checkpoint, whose window may need fetching.
        let checkpoint = match &layer.deflate {
            Some(_) => match self.checkpoint(layer, chunk.blob_offset) {
                Ok(c) => c,
                Err(e) => return Ok(Err(failed(e))),
            },
            None => crate::format::zran::Checkpoint::default(),
        };
        let stored = self.store.put_from_checked(&chunk.digest, |out| {
            decode_chunk_from(layer.codec, std::slice::from_ref(&checkpoint), chunk, raw, out)
        });
        self.stored_outcome(layer, stored)
    }

    /// What storing a chunk came to, counted when it was stored; bytes that did not verify are
    /// given back as the [`ChunkError`] (the caller fetches them again, or gives up).
    pub(super) fn stored_outcome(
        &self,
        layer: &LayerSource,
        stored: std::io::Result<Result<(), ChunkError>>,
    ) -> Result<Result<(), FetchError>, ChunkError> {
        let failed = |e: String| FetchError::Failed(format!("layer {}: {e}", layer.digest));
        let outcome = match stored {
            Err(e) => Err(failed(e.to_string())),
            Ok(Err(e)) if e.is_bad_bytes() => return Err(e),
            Ok(Err(e @ ChunkError::TooLarge { .. })) => {
                Err(FetchError::Refused(format!("layer {}: {e}", layer.digest)))
            }
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(())) => Ok(()),
        };
        if outcome.is_ok() {
            self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
            self.count(layer, 0, 0, 1);
        }
        Ok(outcome)
    }
}
