//! Gzip indexes between the registry, the cache and a mount: built by streaming a layer once
//! (never stored whole: the bytes go from the response through the inflater and are gone),
//! kept in `CACHE/gzindex/<layer>.lgzi` (the table) and `.lgzw` (the windows: whole when built
//! here, filled window by window when read from the registry), shared as OCI 1.1 artifacts
//! whose subject is the image manifest (one per layer, annotated with the layer's digest; two
//! blobs: the table, zstd-compressed, and the windows), and found again by a mount with an
//! empty cache, which fetches the table and then only the windows its reads need.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::cache::CacheDir;
use crate::digest::Digest;
use crate::format::gzip_index::{
    self, GzipIndex, GZIP_INDEX_ARTIFACT_TYPE, GZIP_INDEX_LAYER_MEDIA_TYPE, GZIP_INDEX_WINDOWS_MEDIA_TYPE,
    MAX_INDEX_BYTES,
};
use crate::oci::media_types::Compression;
use crate::registry::referrers::{find_artifacts, push_artifact, read_artifact, ArtifactError, Pushed};
use crate::registry::resolve::Layer;
use crate::registry::{Body, Registry};

/// Annotation of an index artifact: the layer it indexes.
pub const LAYER_ANNOTATION: &str = "dev.lamina.gzip-index.layer";
/// Largest compressed index artifact read from a registry.
const MAX_ARTIFACT_BYTES: u64 = 256 << 20;
/// How many times a broken layer body is resumed while indexing.
const MAX_RESUMES: u32 = 5;

/// Whether lamina can index `layer`: gzip with no TOC of its own (eStargz layers are lazy
/// already), or uncompressed.
pub fn indexable(layer: &Layer) -> bool {
    match layer.compression {
        Compression::Gzip => crate::fetch::locate::annotated_toc_digest(layer).is_none(),
        Compression::None => true,
        Compression::Zstd => false,
    }
}

/// The cached index of `layer`, if there is one and it checks out.
pub fn load_cached(cache: &CacheDir, layer: &Layer) -> Option<GzipIndex> {
    load_table(cache, &layer.digest, layer.size)
}

fn load_table(cache: &CacheDir, layer: &Digest, size: u64) -> Option<GzipIndex> {
    let path = cache.gzip_index_path(layer);
    let data = std::fs::read(&path).ok()?;
    match gzip_index::decode(&data, layer, size) {
        Ok(gz) => Some(gz),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged gzip index in the cache");
            None
        }
    }
}

fn refusal_path(cache_root: &std::path::Path, layer: &Digest) -> std::path::PathBuf {
    cache_root.join("gzindex").join(format!("{}.refused", layer.hex()))
}

/// Record that `layer`'s index served bytes that did not verify: mounts of this cache no
/// longer use an index for it (neither the cache's nor the registry's) until `lamina index`
/// builds a new one.
pub fn refuse(cache_root: &std::path::Path, layer: &Digest, why: &str) -> io::Result<()> {
    let path = refusal_path(cache_root, layer);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, why)
}

/// Why `layer`'s index was refused, if it was.
pub fn refused(cache: &CacheDir, layer: &Digest) -> Option<String> {
    std::fs::read_to_string(refusal_path(cache.root(), layer)).ok()
}

/// Where the windows of `layer`'s index are kept.
pub fn windows_path(cache: &CacheDir, layer: &Digest) -> std::path::PathBuf {
    cache.gzip_index_path(layer).with_extension("lgzw")
}

/// Keep `gz` in the cache (written aside, renamed into place), with its whole windows blob
/// `windows` (a file, moved into the cache) when there is one (built here); otherwise
/// windows are kept as mounts read them.
pub fn save(cache: &CacheDir, gz: &GzipIndex, windows: Option<&std::path::Path>) -> io::Result<()> {
    let path = cache.gzip_index_path(&gz.layer);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match windows {
        Some(w) => std::fs::rename(w, windows_path(cache, &gz.layer))?,
        // Windows of another table (an older index of this layer) must not be read as these:
        // each is checked against its sha256, but a stale file would only cost refetches.
        None => {
            if load_table(cache, &gz.layer, gz.blob_size).is_none_or(|old| old.windows != gz.windows) {
                let _ = std::fs::remove_file(windows_path(cache, &gz.layer));
            }
        }
    }
    let tmp = cache.temp_path("gzindex");
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, gzip_index::encode(gz))?;
    std::fs::rename(&tmp, &path)?;
    let _ = std::fs::remove_file(refusal_path(cache.root(), &gz.layer));
    Ok(())
}

/// Whether the cache holds `gz`'s whole windows blob (it was built here).
pub fn has_all_windows(cache: &CacheDir, gz: &GzipIndex) -> bool {
    std::fs::File::open(windows_path(cache, &gz.layer))
        .and_then(|f| {
            let mut h = crate::digest::HashingReader::new(f);
            io::copy(&mut h, &mut io::sink())?;
            Ok(h.finish())
        })
        .is_ok_and(|(d, n)| d == gz.windows && n == gz.windows_size)
}

/// Stream `layer` from the registry once and index it, its windows blob written to
/// `windows_file`; `on_bytes(total)` reports progress.
pub async fn build(
    registry: Arc<Registry>,
    repo: &str,
    layer: &Layer,
    span: u64,
    windows_file: std::path::PathBuf,
    on_bytes: impl Fn(u64) + Send + 'static,
) -> Result<GzipIndex, String> {
    let span = crate::format::zran::effective_span(span, layer.size);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(16);
    let pump = tokio::spawn(pump(registry, repo.to_string(), layer.clone(), tx, on_bytes));
    let (digest, diff_id, compression) = (layer.digest.clone(), layer.diff_id.clone(), layer.compression);
    let built = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            piece: Bytes::new(),
        };
        if let Some(dir) = windows_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = io::BufWriter::new(std::fs::File::create(&windows_file)?);
        let gz = match compression {
            Compression::None => gzip_index::build_tar(reader, &digest)?,
            _ => gzip_index::build(reader, &digest, &diff_id, span, &mut out)?,
        };
        io::Write::flush(&mut out)?;
        Ok::<_, io::Error>(gz)
    })
    .await
    .map_err(|e| format!("indexer: {e}"))?;
    pump.abort();
    built.map_err(|e| format!("layer {}: {e}", layer.digest))
}

/// Send the blob's bytes down `tx`, resuming a broken body from where it stopped.
async fn pump(
    registry: Arc<Registry>,
    repo: String,
    layer: Layer,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>,
    on_bytes: impl Fn(u64),
) {
    let mut offset = 0u64;
    let mut resumes = 0u32;
    while offset < layer.size {
        let failure = match registry.blob_stream(&repo, &layer.digest, offset).await {
            Err(e) => e.to_string(),
            Ok(s) => {
                let mut skip = if s.partial { 0 } else { offset };
                let mut body = s.response.bytes_stream();
                let mut failure = String::from("body ended early");
                while let Some(piece) = body.next().await {
                    match piece {
                        Ok(mut piece) => {
                            let k = skip.min(piece.len() as u64) as usize;
                            skip -= k as u64;
                            let piece = piece.split_off(k);
                            let room = layer.size - offset;
                            let piece = piece.slice(..(piece.len() as u64).min(room) as usize);
                            offset += piece.len() as u64;
                            on_bytes(offset);
                            if !piece.is_empty() && tx.send(Ok(piece)).await.is_err() {
                                return; // the indexer stopped
                            }
                            if offset == layer.size {
                                return;
                            }
                        }
                        Err(e) => {
                            failure = e.to_string();
                            break;
                        }
                    }
                }
                failure
            }
        };
        resumes += 1;
        if resumes > MAX_RESUMES {
            let _ = tx.send(Err(failure)).await;
            return;
        }
        tracing::warn!(layer = %layer.digest, offset, error = %failure, "layer body broke; resuming");
        tokio::time::sleep(Duration::from_millis(250 << resumes.min(4))).await;
    }
}

struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    piece: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(p)) => self.piece = p,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece.split_to(n));
        Ok(n)
    }
}

/// Push `gz` and its windows blob (the file `windows`) as a referrer of image `image` in `repo`.
pub async fn push(
    registry: &Registry,
    repo: &str,
    image: &Digest,
    gz: &GzipIndex,
    windows: std::path::PathBuf,
) -> Result<Pushed, ArtifactError> {
    let table = gzip_index::compressed_table(gz).map_err(|e| ArtifactError::Bad(e.to_string()))?;
    let annotations = [(LAYER_ANNOTATION.to_string(), gz.layer.to_string())].into();
    push_artifact(
        registry,
        repo,
        image,
        GZIP_INDEX_ARTIFACT_TYPE,
        {
            let mut layers = vec![(GZIP_INDEX_LAYER_MEDIA_TYPE, Body::Bytes(Bytes::from(table)))];
            // An uncompressed layer's index has no windows.
            if gz.windows_size > 0 {
                let body = Body::File {
                    path: windows,
                    len_bytes: gz.windows_size,
                };
                layers.push((GZIP_INDEX_WINDOWS_MEDIA_TYPE, body));
            }
            layers
        },
        annotations,
    )
    .await
}

/// The registry's indexes of image `image`'s `layers`, checked and kept in the cache; an
/// artifact that does not check out is skipped with a warning. Returns the layers found.
pub async fn find(
    registry: &Registry,
    repo: &str,
    image: &Digest,
    layers: &[&Layer],
    cache: &CacheDir,
) -> Result<HashMap<Digest, GzipIndex>, ArtifactError> {
    let listed = find_artifacts(registry, repo, image, GZIP_INDEX_ARTIFACT_TYPE).await?;
    let mut found = HashMap::new();
    for d in listed {
        let named = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(LAYER_ANNOTATION))
            .and_then(|l| l.parse::<Digest>().ok());
        let Some(layer) = named.and_then(|n| layers.iter().find(|l| l.digest == n)) else {
            continue;
        };
        if found.contains_key(&layer.digest) {
            continue; // the newest comes first
        }
        match read_one(registry, repo, &d, layer).await {
            Ok(gz) => {
                if let Err(e) = save(cache, &gz, None) {
                    tracing::warn!(error = %e, "could not keep a gzip index");
                }
                found.insert(layer.digest.clone(), gz);
            }
            Err(e) => {
                tracing::warn!(artifact = %d.digest(), layer = %layer.digest, error = %e, "skipping a gzip index artifact")
            }
        }
    }
    Ok(found)
}

async fn read_one(
    registry: &Registry,
    repo: &str,
    d: &oci_spec::image::Descriptor,
    layer: &Layer,
) -> Result<GzipIndex, String> {
    let (_, blob) = read_artifact(registry, repo, d, GZIP_INDEX_LAYER_MEDIA_TYPE, MAX_ARTIFACT_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    zstd::stream::read::Decoder::new(blob.as_ref())
        .map_err(|e| e.to_string())?
        .take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("not zstd: {e}"))?;
    gzip_index::decode(&data, &layer.digest, layer.size)
}

/// What a mount's fetcher needs to serve a layer through `gz`: its checkpoints and windows
/// (a gzip layer), or nothing more than the file table (an uncompressed layer).
pub fn deflate_source(
    cache: &CacheDir,
    gz: &GzipIndex,
    layer: &Layer,
) -> Option<Arc<crate::fetch::deflate::DeflateSource>> {
    (gz.index.codec == crate::model::ChunkCodec::Deflate).then(|| {
        Arc::new(crate::fetch::deflate::DeflateSource::new(
            layer,
            gz.points.clone(),
            &gz.index,
            (windows_path(cache, &gz.layer), gz.windows.clone()),
            cache.temp_path("gzfallback"),
        ))
    })
}

/// How long a mount waits for the registry's list of indexes.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// The gzip indexes a mount of `image` can use: the cache's, then (when `ask_registry`) the
/// registry's for indexable layers the cache knows nothing of. Failures are warnings: such
/// layers stream as before.
pub async fn for_mount(
    registry: &Registry,
    repo: &str,
    image: &Digest,
    layers: &[Layer],
    cache: &CacheDir,
    ask_registry: bool,
) -> HashMap<Digest, GzipIndex> {
    let mut found = HashMap::new();
    let mut unknown = Vec::new();
    for l in layers.iter().filter(|l| indexable(l)) {
        if let Some(why) = refused(cache, &l.digest) {
            tracing::warn!(layer = %l.digest, why = %why.trim(), "not using the gzip index refused earlier: streaming the layer");
            continue;
        }
        match load_cached(cache, l) {
            Some(gz) => {
                found.insert(l.digest.clone(), gz);
            }
            None if !cache.index_path(&l.digest).exists() => unknown.push(l),
            None => {}
        }
    }
    if ask_registry && !unknown.is_empty() {
        match tokio::time::timeout(FIND_TIMEOUT, find(registry, repo, image, &unknown, cache)).await {
            Ok(Ok(more)) => found.extend(more),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not look for gzip indexes in the registry"),
            Err(_) => tracing::warn!("the registry did not list gzip indexes within {FIND_TIMEOUT:?}"),
        }
    }
    found
}
