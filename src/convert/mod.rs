//! `lamina convert SRC DST`: re-encode an image's layers as zstd:chunked and store the result.
//!
//! ```text
//! SRC manifest/index ──► per platform: config (copied) + layers, N at a time:
//!     already zstd:chunked ─────────────────────────────► copied as is
//!     converted before (cache/conversions/<src>.<opts>) ─► the cached blob
//!     otherwise: stream SRC blob ─► decompress ─► zstd:chunked writer ─► cache/blobs (verified)
//!   ──► upload what DST lacks ──► new manifest (+ new index) ──► DST tag
//! ```
//!
//! Invariants: the uncompressed stream, hence the config and its diff_ids, never changes (the
//! writer's diff_id is checked against the config's); memory stays bounded (streams only); a
//! cached conversion is only used when its blob is in the cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oci_spec::image::{ImageIndex, ImageManifest};

use crate::cache::CacheDir;
use crate::digest::Digest;
use crate::format::compression::decompressor;
use crate::format::writer::{write_zstd_chunked, WriterOptions};
use crate::format::zstd_chunked as zc;
use crate::oci::document;
use crate::oci::media_types::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_ZSTD, OCI_MANIFEST};
use crate::progress::Progress;
use crate::registry::blob::Spool;
use crate::registry::manifest::{self, descriptor_digest, Manifest, Platform};
use crate::registry::resolve::{layers_of, Layer};
use crate::registry::{ClientOptions, RegistryError};
use crate::store::{ImageLocation, Store, StoreError};

/// Bump when the writer's output for the same options changes, so old records are not reused.
const WRITER_VERSION: u32 = 2;

/// Settings for a conversion.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Chunking and compression.
    pub writer: WriterOptions,
    /// Layers converted at once.
    pub parallel: usize,
    /// Only this platform of an index (all when None).
    pub platform: Option<Platform>,
    /// The cache directory.
    pub cache_dir: PathBuf,
    /// Registry settings.
    pub client: ClientOptions,
    /// Progress bars.
    pub progress: bool,
}

/// A conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading or writing an image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Local I/O or the layer's bytes failed.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// Source layer digest.
        layer: Digest,
        /// What went wrong.
        reason: String,
    },
    /// The image cannot be converted as asked.
    #[error("{0}")]
    Image(String),
}

/// How a layer was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Converted now.
    Converted {
        /// Wall time of the conversion.
        elapsed: Duration,
        /// Uncompressed bytes converted.
        tar_bytes: u64,
    },
    /// A conversion from an earlier run was reused.
    Cached,
    /// The layer was zstd:chunked already.
    AlreadyChunked,
}

/// One layer's result.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// Source blob.
    pub source: Digest,
    /// Source size.
    pub source_size: u64,
    /// Converted blob.
    pub digest: Digest,
    /// Converted size.
    pub size: u64,
    /// Descriptor annotations.
    pub annotations: HashMap<String, String>,
    /// What happened.
    pub outcome: LayerOutcome,
}

/// What a conversion did.
#[derive(Debug)]
pub struct ConvertReport {
    /// Digest of what DST's tag now names (manifest or index).
    pub digest: Digest,
    /// Per image manifest: its platform (if from an index) and its layers.
    pub images: Vec<(Option<String>, Vec<LayerReport>)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ConversionRecord {
    digest: String,
    size: u64,
    annotations: HashMap<String, String>,
}

fn fingerprint(w: &WriterOptions) -> String {
    format!(
        "v{WRITER_VERSION}-z{}-{}-{}-{}-{}",
        w.level, w.min_chunk, w.avg_chunk, w.max_chunk, w.single_chunk_max
    )
}

struct Job {
    src: Arc<Store>,
    dst: Arc<Store>,
    cache: CacheDir,
    options: ConvertOptions,
    progress: Progress,
}

/// Convert `src` into `dst`.
pub async fn convert(
    src: &ImageLocation,
    dst: &ImageLocation,
    options: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let src_ref = match src {
        ImageLocation::Registry(r) => r.manifest_reference(),
        ImageLocation::Layout { tag, .. } => tag.clone(),
    };
    let dst_tag = match dst {
        ImageLocation::Registry(r) if r.digest.is_some() => {
            return Err(ConvertError::Image(format!(
                "destination {dst} names a digest; give a tag"
            )))
        }
        ImageLocation::Registry(r) => r.tag.clone().unwrap_or_else(|| "latest".into()),
        ImageLocation::Layout { tag, .. } => tag.clone(),
    };
    let cache = CacheDir::open(&options.cache_dir)
        .map_err(|e| ConvertError::Image(format!("cache {}: {e}", options.cache_dir.display())))?;
    let job = Arc::new(Job {
        src: Arc::new(Store::open(src, &options.client, false)?),
        dst: Arc::new(Store::open(dst, &options.client, true)?),
        cache,
        options: options.clone(),
        progress: Progress::new(options.progress),
    });
    let (body, content_type, _) = job.src.manifest(&src_ref).await?;
    match manifest::parse_manifest(&src.to_string(), content_type.as_deref(), &body)? {
        Manifest::Image(m) => {
            let (bytes, layers) = convert_image(&job, &src.to_string(), *m).await?;
            let digest = job.dst.put_manifest(Some(&dst_tag), OCI_MANIFEST, bytes).await?;
            Ok(ConvertReport {
                digest,
                images: vec![(None, layers)],
            })
        }
        Manifest::Index(index) => convert_index(&job, src, *index, &dst_tag).await,
    }
}

async fn convert_index(
    job: &Arc<Job>,
    src: &ImageLocation,
    index: ImageIndex,
    dst_tag: &str,
) -> Result<ConvertReport, ConvertError> {
    let mut descriptors = Vec::new();
    let mut images = Vec::new();
    for d in index.manifests() {
        let platform = d.platform().as_ref().map(|p| {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s += &format!("/{v}");
            }
            (s, p.os().to_string(), p.architecture().to_string(), p.variant().clone())
        });
        if let (Some(wanted), Some((_, os, arch, variant))) = (&job.options.platform, &platform) {
            if !wanted.matches(os, arch, variant.as_deref()) {
                continue;
            }
        }
        let digest = descriptor_digest(d)?;
        let (body, ct, _) = job.src.manifest(&digest.to_string()).await?;
        let Manifest::Image(m) = manifest::parse_manifest(&digest.to_string(), ct.as_deref(), &body)? else {
            return Err(ConvertError::Image(format!("{src}: nested indexes are not supported")));
        };
        let (bytes, layers) = convert_image(job, &format!("{src}@{digest}"), *m).await?;
        let size = bytes.len();
        let new_digest = job.dst.put_manifest(None, OCI_MANIFEST, bytes).await?;
        descriptors.push(document::manifest_descriptor(
            &new_digest,
            size as u64,
            d.platform().clone(),
        ));
        images.push((platform.map(|p| p.0), layers));
    }
    if descriptors.is_empty() {
        return Err(ConvertError::Image(format!(
            "{src}: no manifest matches the platform asked for"
        )));
    }
    let new_index = document::image_index(descriptors);
    let bytes = Bytes::from(document::canonical_json(&new_index).map_err(|e| ConvertError::Image(e.to_string()))?);
    let digest = job.dst.put_manifest(Some(dst_tag), OCI_INDEX, bytes).await?;
    Ok(ConvertReport { digest, images })
}

/// Convert one image manifest's layers; returns the new manifest's bytes.
async fn convert_image(
    job: &Arc<Job>,
    name: &str,
    manifest: ImageManifest,
) -> Result<(Bytes, Vec<LayerReport>), ConvertError> {
    let config_digest = descriptor_digest(manifest.config())?;
    let config_bytes = job.src.blob_bytes(&config_digest, manifest::MAX_CONFIG_BYTES).await?;
    let config = manifest::parse_config(name, &config_bytes)?;
    let layers = layers_of(name, &manifest, &config)?;
    job.dst.put_blob_bytes(&config_digest, config_bytes.clone()).await?;

    let limit = Arc::new(tokio::sync::Semaphore::new(job.options.parallel.max(1)));
    let mut tasks = Vec::new();
    for layer in layers {
        let (job, limit) = (job.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            convert_layer(&job, &layer).await
        }));
    }
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.map_err(|e| ConvertError::Image(format!("layer task: {e}")))??);
    }
    let layer_descs = reports
        .iter()
        .map(|r| document::descriptor(OCI_LAYER_ZSTD, &r.digest, r.size, Some(r.annotations.clone())))
        .collect();
    let config = document::descriptor(OCI_CONFIG, &config_digest, config_bytes.len() as u64, None);
    let new = document::image_manifest(config, layer_descs, manifest.annotations().clone(), None, None);
    let bytes = document::canonical_json(&new).map_err(|e| ConvertError::Image(e.to_string()))?;
    Ok((bytes.into(), reports))
}

fn is_zstd_chunked(layer: &Layer) -> bool {
    layer.annotations.contains_key(zc::MANIFEST_POSITION_KEY)
        || layer.annotations.contains_key(zc::OLD_MANIFEST_POSITION_KEY)
}

async fn convert_layer(job: &Arc<Job>, layer: &Layer) -> Result<LayerReport, ConvertError> {
    let layer_err = |reason: String| ConvertError::Layer {
        layer: layer.digest.clone(),
        reason,
    };
    let report = |digest: Digest, size: u64, annotations: HashMap<String, String>, outcome| LayerReport {
        source: layer.digest.clone(),
        source_size: layer.size,
        digest,
        size,
        annotations,
        outcome,
    };
    if is_zstd_chunked(layer) {
        if !job.dst.has_blob(&layer.digest).await? {
            let (path, temp) = source_file(job, layer).await?;
            job.dst.put_blob_file(&layer.digest, &path, layer.size).await?;
            if temp {
                let _ = std::fs::remove_file(&path);
            }
        }
        return Ok(report(
            layer.digest.clone(),
            layer.size,
            layer.annotations.clone(),
            LayerOutcome::AlreadyChunked,
        ));
    }
    let record_path = job
        .cache
        .conversion_path(&layer.digest, &fingerprint(&job.options.writer));
    if let Some(rec) = read_record(&record_path) {
        let digest: Digest = rec
            .digest
            .parse()
            .map_err(|e| layer_err(format!("conversion record: {e}")))?;
        let blob = job.cache.blob_path(&digest);
        if blob.exists() {
            job.dst.put_blob_file(&digest, &blob, rec.size).await?;
            return Ok(report(digest, rec.size, rec.annotations, LayerOutcome::Cached));
        }
    }
    let started = Instant::now();
    let bar = job.progress.bytes(layer.digest.hex()[..12].to_string(), layer.size);
    let (reader, download): (Box<dyn std::io::Read + Send>, _) = match job.src.layout_blob_path(&layer.digest) {
        Some(path) => (
            Box::new(std::fs::File::open(&path).map_err(|e| layer_err(format!("{}: {e}", path.display())))?),
            None,
        ),
        None => {
            let spool =
                Spool::create(&job.cache.temp_path("download")).map_err(|e| layer_err(format!("spool: {e}")))?;
            let Store::Registry { registry, repo } = job.src.as_ref() else {
                unreachable!("layouts have blob paths")
            };
            let task = tokio::spawn(crate::registry::blob::download_layer(
                registry.clone(),
                repo.clone(),
                layer.clone(),
                spool.clone(),
                move |n| bar.set_position(n),
            ));
            (
                Box::new(spool.reader().map_err(|e| layer_err(format!("spool: {e}")))?),
                Some((task, spool)),
            )
        }
    };
    let out_path = job.cache.temp_path("converted");
    let (compression, options, out) = (layer.compression, job.options.writer.clone(), out_path.clone());
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let tar = decompressor(reader, compression)?;
        let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
        let mut counted = crate::digest::HashingReader::new(tar);
        let w = write_zstd_chunked(&mut counted, file, &options)?;
        Ok((w, counted.len_bytes()))
    })
    .await
    .map_err(|e| layer_err(format!("converter: {e}")))?;
    if let Some((task, spool)) = download {
        let downloaded = task.await.map_err(|e| layer_err(format!("download task: {e}")))?;
        let _ = std::fs::remove_file(spool.path());
        downloaded?;
    }
    let (written, tar_bytes) = written.map_err(|e| {
        let _ = std::fs::remove_file(&out_path);
        layer_err(format!("converting: {e}"))
    })?;
    if written.diff_id != layer.diff_id {
        let _ = std::fs::remove_file(&out_path);
        return Err(layer_err(format!(
            "converted stream has diff_id {}, the config says {}",
            written.diff_id, layer.diff_id
        )));
    }
    let blob = job.cache.blob_path(&written.digest);
    std::fs::rename(&out_path, &blob).map_err(|e| layer_err(format!("storing the converted blob: {e}")))?;
    let record = ConversionRecord {
        digest: written.digest.to_string(),
        size: written.size,
        annotations: written.annotations.clone(),
    };
    write_record(&record_path, &record).map_err(|e| layer_err(format!("conversion record: {e}")))?;
    job.dst.put_blob_file(&written.digest, &blob, written.size).await?;
    Ok(report(
        written.digest,
        written.size,
        written.annotations,
        LayerOutcome::Converted {
            elapsed: started.elapsed(),
            tar_bytes,
        },
    ))
}

/// A file holding the source blob: the layout's own file, or a verified download (temporary).
async fn source_file(job: &Arc<Job>, layer: &Layer) -> Result<(PathBuf, bool), ConvertError> {
    if let Some(p) = job.src.layout_blob_path(&layer.digest) {
        return Ok((p, false));
    }
    let Store::Registry { registry, repo } = job.src.as_ref() else {
        unreachable!("layouts have blob paths")
    };
    let spool = Spool::create(&job.cache.temp_path("copy")).map_err(|e| ConvertError::Layer {
        layer: layer.digest.clone(),
        reason: format!("spool: {e}"),
    })?;
    crate::registry::blob::download_layer(registry.clone(), repo.clone(), layer.clone(), spool.clone(), |_| {}).await?;
    Ok((spool.path().to_path_buf(), true))
}

fn read_record(path: &std::path::Path) -> Option<ConversionRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_record(path: &std::path::Path, record: &ConversionRecord) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}
