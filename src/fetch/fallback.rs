//! When a gzip layer's index proves wrong during a mount (a chunk inflated through it fails its
//! sha256 again after the mirrors were left out), the layer falls back to streaming: it is
//! downloaded once, whole, and every file's pieces are stored as the stream passes them, as a
//! layer without an index is served. The pieces have the digests the index names (the same
//! 1 MiB pieces of the same files, `format/tar_walk.rs`), so the reads waiting on them are
//! answered from the store as soon as their pieces have passed; nothing the index says about
//! where bytes are is used again.
//!
//! ```text
//! bad chunk (twice) ─► Fallback::start ─► download_layer ─► spool ─► gunzip ─► tar walk
//!                                                     each file's pieces ─► chunk store
//! reads of this layer ─► Fallback::wait: their digests in the store, or the stream failed,
//!                        or the read's deadline
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::fetcher::{FetchError, Fetcher, LayerSource};
use crate::registry::resolve::Layer;

/// One layer's fallback stream: started at most once at a time, waited on by its readers.
#[derive(Debug)]
pub struct Fallback {
    layer: Layer,
    /// Where the download is spooled (removed when the stream ends).
    spool: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    started: bool,
    /// How the last stream ended: `Ok` when the layer passed whole and matched its diff_id.
    ended: Option<Result<(), String>>,
    /// Streams started, and when the last one failed: a failed stream is started again by
    /// the next read, at most [`MAX_STREAMS`] times in all and not sooner than
    /// [`RESTART_AFTER`].
    streams: u32,
    failed_at: Option<std::time::Instant>,
}

/// Most streams of one layer per mount.
const MAX_STREAMS: u32 = 3;
/// Least time between a failed stream and the next.
const RESTART_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Fallback {
    /// For `layer`, spooling to `spool` when it has to stream.
    pub fn new(layer: Layer, spool: PathBuf) -> Fallback {
        Fallback {
            layer,
            spool,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// Whether reads of this layer now wait on the stream.
    pub fn started(&self) -> bool {
        self.state.lock().started
    }

    /// Stream the layer on `fetcher`'s runtime (once: a call while it runs, or after it
    /// succeeded, does nothing; after a failed stream, a new one within the limits above).
    pub(super) fn start(self: &Arc<Self>, fetcher: &Arc<Fetcher>, source: &LayerSource) {
        {
            let mut st = self.state.lock();
            let again = matches!(st.ended, Some(Err(_)))
                && st.streams < MAX_STREAMS
                && st.failed_at.is_none_or(|t| t.elapsed() >= RESTART_AFTER);
            if st.started && !again {
                return;
            }
            st.started = true;
            st.ended = None;
            st.streams += 1;
        }
        tracing::warn!(layer = %self.layer.digest, "the gzip index gives wrong bytes: streaming the layer instead");
        let (me, fetcher, source) = (self.clone(), fetcher.clone(), source.clone());
        fetcher.runtime.clone().spawn(async move {
            let ended = me.stream(&fetcher, &source).await;
            match &ended {
                Ok(()) => tracing::info!(layer = %me.layer.digest, "fallback stream: the layer is in the cache"),
                Err(e) => tracing::warn!(layer = %me.layer.digest, error = %e, "fallback stream failed"),
            }
            let mut st = me.state.lock();
            if ended.is_err() {
                st.failed_at = Some(std::time::Instant::now());
            }
            st.ended = Some(ended);
            drop(st);
            me.changed.notify_all();
        });
    }

    async fn stream(self: &Arc<Self>, fetcher: &Arc<Fetcher>, source: &LayerSource) -> Result<(), String> {
        let _ = std::fs::remove_file(&self.spool);
        if let Some(dir) = self.spool.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("spool: {e}"))?;
        }
        let spool = crate::registry::blob::Spool::create(&self.spool).map_err(|e| format!("spool: {e}"))?;
        let from = (source.registry.clone(), source.repo.clone());
        let download = fetcher.download_counted(source, from, self.layer.clone(), spool.clone());
        let reader = match spool.reader() {
            Ok(r) => r,
            Err(e) => {
                download.abort();
                let _ = std::fs::remove_file(&self.spool);
                return Err(format!("spool: {e}"));
            }
        };
        let (me, store) = (self.clone(), fetcher.store().clone());
        let streamed = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let tar =
                crate::format::compression::decompressor(reader, me.layer.compression).map_err(|e| e.to_string())?;
            let mut hashing = crate::digest::HashingReader::new(tar);
            crate::fetch::plain::stream_plain_layer(&mut hashing, &store, 0, |_, _| {
                // A file's pieces are stored: wake the readers (under the lock, so that none
                // checks the store, misses them and then sleeps through this).
                drop(me.state.lock());
                me.changed.notify_all();
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            let (got, _) = hashing.finish();
            match got == me.layer.diff_id {
                true => Ok(()),
                false => Err(format!(
                    "uncompressed digest {got} does not match diff_id {}",
                    me.layer.diff_id
                )),
            }
        })
        .await
        .map_err(|e| format!("stream: {e}"));
        let downloaded = download.await.map_err(|e| format!("download: {e}"))?;
        let _ = std::fs::remove_file(&self.spool);
        downloaded.map_err(|e| e.to_string())?;
        streamed?
    }

    /// Wait until every one of `digests` is in `fetcher`'s store, the stream has ended without
    /// them, or `deadline`.
    pub(super) fn wait(&self, fetcher: &Fetcher, digests: &[[u8; 32]], deadline: Instant) -> Result<(), FetchError> {
        let mut st = self.state.lock();
        loop {
            if digests.iter().all(|d| fetcher.store().contains(d)) {
                return Ok(());
            }
            match &st.ended {
                Some(Ok(())) => {
                    return Err(FetchError::Failed(format!(
                        "layer {}: streamed whole, but a chunk its gzip index names is not in it",
                        self.layer.digest
                    )))
                }
                Some(Err(e)) => {
                    return Err(FetchError::Failed(format!("layer {}: {e}", self.layer.digest)));
                }
                None => {}
            }
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return Err(FetchError::Timeout(fetcher.timeout));
            }
        }
    }
}
