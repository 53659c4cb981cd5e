//! From an image reference to what a pull or mount needs: the chosen platform's manifest, its
//! config, and a checked list of layers with their diff ids.

use bytes::Bytes;
use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::client::Registry;
use super::error::{RegistryError, Result};
use super::manifest::{self, descriptor_digest, Manifest, Platform};
use crate::digest::Digest;
use crate::reference::ImageRef;

/// How many index → manifest hops are followed (an index of indexes is legal but rare).
const MAX_INDEX_DEPTH: usize = 2;
/// Most layers accepted in one image (Docker's own limit is 127; leave headroom).
pub const MAX_LAYERS: usize = 500;

pub use crate::oci::media_types::Compression;
use crate::oci::media_types::{layer_compression, LAYER_MEDIA_TYPES};

/// One layer of a resolved image.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Media type as declared.
    pub media_type: String,
    /// Compression the media type declares.
    pub compression: Compression,
    /// sha256 of the uncompressed tar, from the config.
    pub diff_id: Digest,
    /// The descriptor's annotations.
    pub annotations: std::collections::HashMap<String, String>,
}

/// An image ready to be pulled or mounted.
#[derive(Debug)]
pub struct ResolvedImage {
    /// The reference it came from.
    pub reference: ImageRef,
    /// Digest of the chosen image manifest.
    pub manifest_digest: Digest,
    /// The chosen image manifest.
    pub manifest: ImageManifest,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The image config.
    pub config: ImageConfiguration,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
}

/// Where resolved documents (manifests, indexes, configs) are kept by digest, so that a
/// reference by digest resolves again without the registry.
pub trait DocumentStore: Send + Sync {
    /// The document named `digest`, if kept (and its bytes still have that digest).
    fn get(&self, digest: &Digest) -> Option<Bytes>;
    /// Keep a document whose digest was checked (best effort).
    fn put(&self, digest: &Digest, bytes: &[u8]);
}

/// Resolve `reference` on `registry`, picking `platform` from an index.
pub async fn resolve_image(registry: &Registry, reference: &ImageRef, platform: &Platform) -> Result<ResolvedImage> {
    resolve_image_with(registry, reference, platform, None).await
}

/// A manifest by tag or digest: from `docs` when named by a digest it keeps, else from the
/// registry (and then kept).
async fn manifest_of(
    registry: &Registry,
    repo: &str,
    wanted: &str,
    docs: Option<&dyn DocumentStore>,
) -> Result<(Bytes, Option<String>, Digest)> {
    if let (Some(docs), Ok(digest)) = (docs, wanted.parse::<Digest>()) {
        if let Some(body) = docs.get(&digest) {
            return Ok((body, None, digest));
        }
    }
    let (body, content_type, digest) = registry.manifest(repo, wanted).await?;
    if let Some(docs) = docs {
        docs.put(&digest, &body);
    }
    Ok((body, content_type, digest))
}

/// [`resolve_image`], keeping manifests and configs in `docs`: a reference by digest whose
/// documents are kept resolves without a single request.
pub async fn resolve_image_with(
    registry: &Registry,
    reference: &ImageRef,
    platform: &Platform,
    docs: Option<&dyn DocumentStore>,
) -> Result<ResolvedImage> {
    let repo = &reference.repository;
    let mut wanted = reference.manifest_reference();
    let mut depth = 0;
    let (manifest, manifest_digest) = loop {
        let (body, content_type, digest) = manifest_of(registry, repo, &wanted, docs).await?;
        match manifest::parse_manifest(&reference.to_string(), content_type.as_deref(), &body)? {
            Manifest::Image(m) => break (*m, digest),
            Manifest::Index(i) if depth < MAX_INDEX_DEPTH => {
                depth += 1;
                let d = manifest::select_platform(&reference.to_string(), &i, platform)?;
                wanted = descriptor_digest(d)?.to_string();
            }
            Manifest::Index(_) => {
                return Err(bad(reference, format!("indexes nested deeper than {MAX_INDEX_DEPTH}")));
            }
        }
    };
    let config_digest = descriptor_digest(manifest.config())?;
    let config_bytes = match docs.and_then(|d| d.get(&config_digest)) {
        Some(b) => b,
        None => {
            let b = registry
                .blob_bytes(repo, &config_digest, manifest::MAX_CONFIG_BYTES)
                .await?;
            if let Some(docs) = docs {
                docs.put(&config_digest, &b);
            }
            b
        }
    };
    let config = manifest::parse_config(&reference.to_string(), &config_bytes)?;
    let layers = layers_of(&reference.to_string(), &manifest, &config)?;
    Ok(ResolvedImage {
        reference: reference.clone(),
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
    })
}

fn bad(reference: &(impl std::fmt::Display + ?Sized), reason: String) -> RegistryError {
    RegistryError::BadManifest {
        reference: reference.to_string(),
        reason,
    }
}

/// Pair each layer descriptor with its diff id, checking media types and counts.
pub fn layers_of(reference: &str, manifest: &ImageManifest, config: &ImageConfiguration) -> Result<Vec<Layer>> {
    let descriptors = manifest.layers();
    let diff_ids = config.rootfs().diff_ids();
    if descriptors.len() > MAX_LAYERS {
        return Err(bad(
            reference,
            format!("{} layers; at most {MAX_LAYERS} are accepted", descriptors.len()),
        ));
    }
    if descriptors.len() != diff_ids.len() {
        return Err(bad(
            reference,
            format!(
                "manifest has {} layers but config has {} diff_ids",
                descriptors.len(),
                diff_ids.len()
            ),
        ));
    }
    descriptors
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            let media_type = d.media_type().to_string();
            let compression = layer_compression(&media_type).ok_or_else(|| RegistryError::UnsupportedMediaType {
                what: format!("layer {} of {reference}", d.digest()),
                media_type: media_type.clone(),
                supported: LAYER_MEDIA_TYPES.map(|(m, _, _)| m).join(", "),
            })?;
            let diff_id = diff_id
                .parse()
                .map_err(|e: crate::digest::DigestError| bad(reference, format!("config diff_id: {e}")))?;
            Ok(Layer {
                digest: descriptor_digest(d)?,
                size: d.size(),
                media_type,
                compression,
                diff_id,
                annotations: d.annotations().clone().unwrap_or_default(),
            })
        })
        .collect()
}
