//! Downloading one layer blob into a [`Spool`], resuming with a `Range` request after a
//! connection breaks mid-body, and checking size and digest at the end.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::check::BlobCheck;
use super::spool::Spool;
use crate::registry::resolve::Layer;
use crate::registry::{Registry, RegistryError};

/// How many times a broken body is resumed before the download fails.
const MAX_RESUMES: u32 = 5;
/// Pause before resuming; doubled each time.
const RESUME_BACKOFF: Duration = Duration::from_millis(250);

/// Download `layer` into `spool`, reporting progress through `on_bytes(total_so_far)`.
pub async fn download_layer(
    registry: Arc<Registry>,
    repo: String,
    layer: Layer,
    spool: Arc<Spool>,
    on_bytes: impl Fn(u64),
) -> Result<(), RegistryError> {
    let guard = spool.guard();
    let result = download(&registry, &repo, &layer, &spool, &on_bytes).await;
    guard.done(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    result
}

async fn download(
    registry: &Registry,
    repo: &str,
    layer: &Layer,
    spool: &Spool,
    on_bytes: &impl Fn(u64),
) -> Result<(), RegistryError> {
    let what = format!("layer {}", layer.digest);
    let io_error = |source: std::io::Error| RegistryError::Io {
        what: format!("writing {}", spool.path().display()),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(spool.path())
        .map_err(io_error)?;
    let mut check = BlobCheck::new();
    let mut resumes = 0;
    loop {
        let offset = check.len_bytes();
        let stream = match registry.blob_stream(repo, &layer.digest, offset).await {
            Ok(s) => s,
            Err(e) if e.is_transient() && resumes < MAX_RESUMES => {
                resumes += 1;
                tokio::time::sleep(RESUME_BACKOFF * (1 << resumes)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        // A 200 answer to a resume starts again at byte 0: skip what we already have.
        let mut skip = if stream.partial { 0 } else { offset };
        let url = stream.url.clone();
        let mut body = stream.response.bytes_stream();
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            };
            let k = skip.min(chunk.len() as u64) as usize;
            skip -= k as u64;
            let chunk = chunk.split_off(k);
            if chunk.is_empty() {
                continue;
            }
            if check.len_bytes() + chunk.len() as u64 > layer.size {
                return Err(RegistryError::SizeMismatch {
                    what: what.clone(),
                    expected: layer.size,
                    actual: check.len_bytes() + chunk.len() as u64,
                });
            }
            file.write_all_at(&chunk, check.len_bytes()).map_err(io_error)?;
            check.update(&chunk);
            spool.advance(check.len_bytes());
            on_bytes(check.len_bytes());
        }
        match broken {
            None if check.len_bytes() < layer.size && resumes < MAX_RESUMES => {
                // The body ended early without an error: resume as for a broken connection.
                resumes += 1;
                tracing::warn!(%url, got = check.len_bytes(), want = layer.size, "download ended early; resuming");
            }
            None => break,
            Some(e) if resumes < MAX_RESUMES => {
                resumes += 1;
                tracing::warn!(%url, error = %e, at = check.len_bytes(), "download broke; resuming");
                tokio::time::sleep(RESUME_BACKOFF * (1 << resumes)).await;
            }
            Some(error) => {
                return Err(RegistryError::Transport {
                    method: "GET".into(),
                    url,
                    error,
                })
            }
        }
    }
    check.verify(&what, &layer.digest, layer.size)
}
