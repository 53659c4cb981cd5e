//! Layer streams: a plain (TOC-less) layer is downloaded once, in the background, and each
//! entry is handed to the [`LiveUnion`] as soon as the stream has passed it (its bytes already
//! in the chunk store), so a file is served before the layer has finished arriving.
//!
//! ```text
//! registry ─► spool file (download_layer: retries, Range resume) ─► decompress ─► tar entries
//!   each entry: its bytes → chunk store; its index entry → LiveUnion::push
//! end: diff_id checked → layer complete, its index kept in the cache (the next mount is
//!      instant and needs nothing from the registry)
//! ```
//!
//! A failed attempt is tried again with backoff, skipping the entries already handed over (a
//! layer's bytes are fixed by its digest, so entry `n` is the same in every attempt). A layer
//! whose bytes are wrong (diff_id mismatch, a tar that does not parse after a complete,
//! verified download, an entry the union refuses) fails for good: waiters get EIO. Files
//! handed over before the end were served before the diff_id could be checked: they come
//! over the same authenticated connection as the digest-checked blob, and a layer that fails
//! the check serves nothing more.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::CacheDir;
use crate::fetch::{Fetcher, LayerSource};
use crate::registry::resolve::Layer;
use crate::registry::Registry;
use crate::union::live::LiveUnion;

/// First wait before trying a failed stream again; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// One plain layer to stream.
pub struct LayerStream {
    /// Position in the image, bottom = 0.
    pub index: usize,
    /// The layer.
    pub layer: Layer,
    /// Registry and repository.
    pub registry: Arc<Registry>,
    /// Repository.
    pub repo: String,
}

/// Why one attempt failed, and whether another could succeed.
struct Failure {
    reason: String,
    permanent: bool,
    /// The registry refuses the blob for good (404, 401, 403): the layer cannot be had.
    unavailable: bool,
}

/// Stream `s` into `live` until it is complete or has failed for good.
pub async fn run(s: LayerStream, live: Arc<LiveUnion>, cache: CacheDir, fetcher: Arc<Fetcher>, source: LayerSource) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let skip = live.entries_of(s.index);
        tracing::info!(layer = %s.layer.digest, bytes = s.layer.size, skip, "plain layer: streaming it");
        match attempt(&s, &live, &cache, &fetcher, &source, skip).await {
            Ok(()) => {
                if let Err(e) = live.finish(s.index, Ok(())) {
                    tracing::error!(layer = %s.layer.digest, error = %e, "plain layer: cannot be merged");
                    return;
                }
                let index = live.layer_index(s.index);
                if let Err(e) = crate::index::disk::save(&index, &cache.index_path(&s.layer.digest)) {
                    tracing::warn!(error = %e, "could not keep the layer index");
                }
                tracing::info!(layer = %s.layer.digest, entries = index.entries.len(), "plain layer: complete");
                return;
            }
            Err(f) if f.unavailable => {
                tracing::error!(
                    layer = %s.layer.digest,
                    reason = %f.reason,
                    "plain layer: the registry refuses it for good; serving the other layers without it"
                );
                let _ = live.give_up(s.index, f.reason);
                return;
            }
            Err(f) => {
                tracing::warn!(layer = %s.layer.digest, reason = %f.reason, permanent = f.permanent, "plain layer: stream failed");
                let _ = live.finish(s.index, Err((f.reason, f.permanent)));
                if f.permanent {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                live.restart(s.index);
            }
        }
    }
}

async fn attempt(
    s: &LayerStream,
    live: &Arc<LiveUnion>,
    cache: &CacheDir,
    fetcher: &Arc<Fetcher>,
    source: &LayerSource,
    skip: usize,
) -> Result<(), Failure> {
    let local = |reason: String| Failure {
        reason,
        permanent: false,
        unavailable: false,
    };
    let store = fetcher.store().clone();
    let spool =
        crate::registry::blob::Spool::create(&cache.temp_path("plain")).map_err(|e| local(format!("spool: {e}")))?;
    let from = (s.registry.clone(), s.repo.clone());
    let download = fetcher.download_counted(source, from, s.layer.clone(), spool.clone());
    let reader = spool.reader().map_err(|e| local(format!("spool: {e}")))?;
    let (compression, diff_id, li, live) = (s.layer.compression, s.layer.diff_id.clone(), s.index, live.clone());
    let indexed = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let tar = crate::format::compression::decompressor(reader, compression).map_err(|e| e.to_string())?;
        let mut hashing = crate::digest::HashingReader::new(tar);
        crate::fetch::plain::stream_plain_layer(&mut hashing, &store, skip, |entry, chunks| {
            live.push(li, entry, chunks)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|e| e.to_string())?;
        let (actual, _) = hashing.finish();
        if actual != diff_id {
            return Err(format!("uncompressed digest {actual} does not match diff_id {diff_id}"));
        }
        Ok(())
    })
    .await
    .map_err(|e| local(format!("indexer: {e}")))?;
    let downloaded = download.await.map_err(|e| local(format!("download: {e}")))?;
    let _ = std::fs::remove_file(spool.path());
    if let Err(e) = downloaded {
        return Err(Failure {
            unavailable: e.is_refusal(),
            ..local(e.to_string())
        });
    }
    // The blob arrived whole and matched its digest: a failure now is in the bytes themselves
    // (before that, an indexer failure may only be the download's, so it is retried).
    indexed.map_err(|reason| Failure {
        reason,
        permanent: true,
        unavailable: false,
    })
}
