//! One layer of the store: found from the names containers/storage looks up
//! (`base64(image reference)/<layer digest>`), indexed, and served in overlayfs form.
//!
//! ```text
//! name ─► ImageRef (strict base64, strict reference) ─► resolve (cache first; one deadline)
//!      ─► the manifest's layer with that compressed digest ─► its index (cache, else TOC)
//!      ─► overlay_form ─► LiveUnion of one layer ─► ImageView (chunks from the shared cache)
//! ```
//!
//! A layer without a table of contents is not offered (ENOENT): podman pulls it itself.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::cache::CacheDir;
use crate::digest::Digest;
use crate::fetch::locate::read_layer_toc;
use crate::fetch::{Fetcher, LayerSource};
use crate::index::{disk, overlay_form::overlay_form};
use crate::oci::media_types::Compression;
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::registry::{resolve_image_with, ClientOptions, PullPolicy, Registry};
use crate::union::live::LiveUnion;
use crate::view::ImageView;

/// Longest reference name decoded (Docker references are at most 255 + 71 bytes).
const MAX_NAME: usize = 1024;

/// How layers are found and served.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The shared cache.
    pub cache_dir: std::path::PathBuf,
    /// Registry settings.
    pub client: ClientOptions,
    /// Platform from an index.
    pub platform: Platform,
    /// How long a read waits for a chunk.
    pub fetch_timeout: Duration,
    /// How long a lookup may spend on the registry.
    pub lookup_timeout: Duration,
}

/// The image reference a directory name stands for, or `None` (never a guess).
pub fn decode_reference(name: &[u8]) -> Option<ImageRef> {
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(name).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    let r = ImageRef::parse(text).ok()?;
    // Only the canonical spelling: a name that parses but is not what containers/storage
    // writes would be a second name for the same layer.
    (base64::engine::general_purpose::STANDARD.encode(text) == name_str(name)?).then_some(r)
}

fn name_str(name: &[u8]) -> Option<&str> {
    std::str::from_utf8(name).ok()
}

/// A layer being served.
pub struct StoreLayer {
    /// Its files, overlay form.
    pub view: Arc<ImageView>,
    /// The `info` file: containers/storage's `Layer` JSON.
    pub info: Vec<u8>,
    /// Where the compressed blob is.
    pub source: LayerSource,
    /// Its size.
    pub blob_size: u64,
}

/// Why a layer is not offered.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The image has no such layer, or lamina cannot serve it lazily: ENOENT.
    #[error("{0}")]
    Absent(String),
    /// The registry could not be asked: EIO.
    #[error("{0}")]
    Unavailable(String),
}

/// Find layer `digest` of `image` and make it servable.
pub async fn open(
    image: &ImageRef,
    digest: &Digest,
    s: &Settings,
    fetcher: &Arc<Fetcher>,
) -> Result<StoreLayer, LookupError> {
    let work = async {
        let registry = Arc::new(
            Registry::new(&image.registry, image.api_host(), &s.client)
                .map_err(|e| LookupError::Unavailable(e.to_string()))?,
        );
        let cache = CacheDir::open(&s.cache_dir).map_err(|e| LookupError::Unavailable(e.to_string()))?;
        let resolved = resolve_image_with(&registry, image, &s.platform, Some(&cache), PullPolicy::Missing)
            .await
            .map_err(|e| match e.is_refusal() {
                true => LookupError::Absent(e.to_string()),
                false => LookupError::Unavailable(e.to_string()),
            })?;
        let layer = resolved
            .layers
            .iter()
            .find(|l| &l.digest == digest)
            .ok_or_else(|| LookupError::Absent(format!("{image} has no layer {digest}")))?
            .clone();
        let (index, gzip) = load_any_index(&registry, &cache, &image.repository, &resolved.manifest_digest, &layer)
            .await?
            .ok_or_else(|| {
                LookupError::Absent(format!(
                    "layer {digest} has no table of contents and no gzip index: podman pulls it itself"
                ))
            })?;
        // The layers below, merged: the metadata of directories this layer writes into
        // without carrying them (their indexes are cached for the lookups of those layers).
        let position = resolved
            .layers
            .iter()
            .position(|l| l.digest == layer.digest)
            .unwrap_or(0);
        let mut below = Vec::with_capacity(position);
        for l in &resolved.layers[..position] {
            match load_any_index(&registry, &cache, &image.repository, &resolved.manifest_digest, l).await? {
                Some((ix, _)) => below.push(ix),
                None => {
                    below.clear();
                    break;
                }
            }
        }
        let lower = crate::union::Union::build(&below).unwrap_or_default();
        let codec = index.codec;
        let form = overlay_form(&index, |path| {
            let mut ino = crate::union::ROOT_INO;
            for c in path.components() {
                ino = *lower.node(ino).children.get(c)?;
            }
            Some(lower.node(ino).meta.clone())
        });
        let live = LiveUnion::new(vec![form], &[false], s.fetch_timeout)
            .map_err(|e| LookupError::Absent(format!("layer {digest}: {e}")))?;
        let source = LayerSource {
            registry: registry.clone(),
            repo: image.repository.clone(),
            digest: digest.clone(),
            codec,
            deflate: gzip.as_ref().and_then(|(d, _)| d.clone()),
        };
        let view = Arc::new(ImageView::new(Arc::new(live), vec![source.clone()], fetcher.clone()));
        let toc_digest = layer
            .annotations
            .get(crate::format::zstd_chunked::MANIFEST_CHECKSUM_KEY)
            .or_else(|| layer.annotations.get(crate::format::estargz::TOC_DIGEST_KEY));
        // Kept beside the layer's index: another image with this layer asks nothing again.
        let size_path = cache.index_path(&layer.digest).with_extension("tar-size");
        let known = match &gzip {
            Some((_, n)) => i64::try_from(*n).ok(),
            None => std::fs::read_to_string(&size_path)
                .ok()
                .and_then(|t| t.trim().parse().ok()),
        };
        let diff_size = match known {
            Some(n) => n,
            None => {
                let n = tar_size(&registry, &image.repository, &layer).await;
                if n >= 0 {
                    let _ = std::fs::write(&size_path, n.to_string());
                }
                n
            }
        };
        let info = info_json(
            &layer.digest,
            layer.size,
            &layer.diff_id,
            diff_size,
            layer.compression,
            toc_digest,
        );
        Ok(StoreLayer {
            view,
            info,
            source,
            blob_size: layer.size,
        })
    };
    tokio::time::timeout(s.lookup_timeout, work)
        .await
        .map_err(|_| LookupError::Unavailable(format!("the registry did not answer within {:?}", s.lookup_timeout)))?
}

/// A gzip layer's serving parts when it has a gzip index: its checkpoints, and its tar size.
type GzipParts = (Option<Arc<crate::fetch::deflate::DeflateSource>>, u64);

/// A layer's index from its table of contents ([`load_index`]), else from a gzip index
/// (`lamina index`; the cache's, else the registry's), with what serving it then needs.
async fn load_any_index(
    registry: &Registry,
    cache: &CacheDir,
    repo: &str,
    manifest: &Digest,
    layer: &crate::registry::resolve::Layer,
) -> Result<Option<(crate::index::LayerIndex, Option<GzipParts>)>, LookupError> {
    if let Some(index) = load_index(registry, cache, repo, layer).await? {
        return Ok(Some((index, None)));
    }
    let found =
        crate::fetch::gzindex::for_mount(registry, repo, manifest, std::slice::from_ref(layer), cache, true).await;
    Ok(found.get(&layer.digest).map(|gz| {
        let deflate = crate::fetch::gzindex::deflate_source(cache, gz, layer);
        (gz.index.clone(), Some((deflate, gz.tar_size)))
    }))
}

/// A layer's index: the cache's, else from its table of contents (then kept); `None` for a
/// layer without one.
async fn load_index(
    registry: &Registry,
    cache: &CacheDir,
    repo: &str,
    layer: &crate::registry::resolve::Layer,
) -> Result<Option<crate::index::LayerIndex>, LookupError> {
    let path = cache.index_path(&layer.digest);
    let toc = crate::fetch::locate::annotated_toc_digest(layer);
    if let Ok(index) = disk::load(&path) {
        if index.codec != crate::model::ChunkCodec::Stream && cache.index_toc_matches(&layer.digest, toc) {
            return Ok(Some(index));
        }
    }
    let found = read_layer_toc(registry, repo, layer)
        .await
        .map_err(|e| LookupError::Unavailable(e.to_string()))?;
    if let Some(index) = &found.index {
        if let Err(e) = disk::save(index, &path) {
            tracing::warn!(error = %e, "could not keep the layer index");
        }
        cache.record_index_toc(&layer.digest, toc);
    }
    Ok(found.index)
}

/// The length of a layer's tar stream, which podman needs to export it (`push`, `save`):
/// from the zstd:chunked tar-split (one Range request), else eStargz's annotation; -1 when
/// neither is there (as stargz-store writes it), and podman then cannot export the layer.
async fn tar_size(registry: &Registry, repo: &str, layer: &crate::registry::resolve::Layer) -> i64 {
    use crate::format::{tar_split, zstd_chunked};
    if let Some(v) = layer.annotations.get("io.containers.estargz.uncompressed-size") {
        return v.parse().unwrap_or(-1);
    }
    let Some((offset, len, uncompressed)) = layer
        .annotations
        .get(zstd_chunked::TARSPLIT_POSITION_KEY)
        .and_then(|p| tar_split::position(p))
    else {
        return -1;
    };
    if uncompressed > tar_split::MAX_TAR_SPLIT_BYTES || len > tar_split::MAX_TAR_SPLIT_BYTES {
        return -1;
    }
    let size = async {
        let compressed = registry
            .blob_range(repo, &layer.digest, offset, len)
            .await
            .map_err(|e| e.to_string())?;
        let split = zstd_chunked::decompress_exact(&compressed, uncompressed)?;
        tar_split::tar_size(&split)
    };
    match size.await {
        Ok(n) if n <= i64::MAX as u64 => n as i64,
        Ok(_) => -1,
        Err(e) => {
            tracing::warn!(layer = %layer.digest, error = %e, "tar-split unreadable: the layer's size is unknown");
            -1
        }
    }
}

/// containers/storage's `Layer` JSON for a layer (`layers.go`): what podman takes over when it
/// uses the layer; `diff_size` is the tar stream's length (-1: unknown).
pub fn info_json(
    compressed: &Digest,
    compressed_size: u64,
    diff_id: &Digest,
    diff_size: i64,
    compression: Compression,
    toc_digest: Option<&String>,
) -> Vec<u8> {
    // pkg/archive's numbering: 0 none, 1 bzip2, 2 gzip, 3 xz, 4 zstd.
    let compression = match compression {
        Compression::Gzip => 2,
        Compression::Zstd => 4,
        _ => 0,
    };
    let mut v = serde_json::json!({
        "id": "",
        "compressed-diff-digest": compressed.to_string(),
        "compressed-size": compressed_size,
        "diff-digest": diff_id.to_string(),
        "diff-size": diff_size,
        "compression": compression,
    });
    if let Some(t) = toc_digest {
        v["toc-digest"] = serde_json::Value::String(t.clone());
    }
    serde_json::to_vec(&v).expect("JSON of plain values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decode_only_in_canonical_base64() {
        let name = base64::engine::general_purpose::STANDARD.encode("127.0.0.1:5000/py:zc");
        let r = decode_reference(name.as_bytes()).unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "py"));
        for bad in [
            &b""[..],
            b"not base64!",
            b"////",
            name.trim_end_matches('=').as_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode("UPPER/Case")
                .as_bytes(),
        ] {
            assert!(decode_reference(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn info_names_both_digests_and_the_compression() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let v: serde_json::Value = serde_json::from_slice(&info_json(&a, 10, &b, 20, Compression::Zstd, None)).unwrap();
        assert_eq!(v["compressed-diff-digest"], a.to_string());
        assert_eq!(v["diff-digest"], b.to_string());
        assert_eq!(
            (v["compressed-size"].as_u64(), v["compression"].as_u64()),
            (Some(10), Some(4))
        );
    }
}
