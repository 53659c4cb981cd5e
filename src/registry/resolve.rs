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
/// reference by digest resolves again without the registry, and the last resolution of each
/// tag, so that a tag resolves while the registry is away.
pub trait DocumentStore: Send + Sync {
    /// The document named `digest`, if kept (and its bytes still have that digest).
    fn get(&self, digest: &Digest) -> Option<Bytes>;
    /// Keep a document whose digest was checked (best effort).
    fn put(&self, digest: &Digest, bytes: &[u8]);
    /// The last resolution of `tag` (`registry/repository:tag`) and when it was made.
    fn tag(&self, tag: &str) -> Option<(Digest, std::time::SystemTime)>;
    /// Remember that `tag` resolved to `digest` now (best effort).
    fn put_tag(&self, tag: &str, digest: &Digest);
}

/// When a tag is asked of the registry again (podman's words and meanings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve a tag again when the registry answers within [`TAG_BOUND`]; when it cannot be
    /// reached, use the last resolution, with a warning. Digests come from the cache.
    #[default]
    Missing,
    /// A tag must be resolved again: the registry must answer.
    Always,
    /// Never ask the registry: everything comes from the cache or the command fails.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!("{s:?}: expected missing, always or never")),
        }
    }
}

/// How long `--pull missing` waits for the registry to resolve a tag before it uses the
/// cache's last resolution.
pub const TAG_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolve `reference` on `registry`, picking `platform` from an index.
pub async fn resolve_image(registry: &Registry, reference: &ImageRef, platform: &Platform) -> Result<ResolvedImage> {
    resolve_image_with(registry, reference, platform, None, PullPolicy::Always).await
}

/// A manifest by tag or digest: from `docs` when named by a digest it keeps, else from the
/// registry (and then kept); a tag as `policy` says.
async fn manifest_of(
    registry: &Registry,
    reference: &ImageRef,
    wanted: &str,
    docs: Option<&dyn DocumentStore>,
    policy: PullPolicy,
) -> Result<(Bytes, Option<String>, Digest)> {
    let repo = &reference.repository;
    let not_cached = |what: String| RegistryError::NotCached {
        reference: reference.to_string(),
        what,
    };
    if let Ok(digest) = wanted.parse::<Digest>() {
        if let Some(body) = docs.and_then(|d| d.get(&digest)) {
            return Ok((body, None, digest));
        }
        if policy == PullPolicy::Never {
            return Err(not_cached(format!("manifest {digest}")));
        }
        let (body, content_type, digest) = registry.manifest(repo, wanted).await?;
        if let Some(docs) = docs {
            docs.put(&digest, &body);
        }
        return Ok((body, content_type, digest));
    }
    let tag = format!("{}/{repo}:{wanted}", reference.registry);
    // The last resolution, if its manifest is still kept.
    let cached = || {
        let docs = docs?;
        let (digest, at) = docs.tag(&tag)?;
        let body = docs.get(&digest)?;
        Some((body, digest, at))
    };
    let asked = match policy {
        PullPolicy::Never => {
            let (body, digest, _) = cached().ok_or_else(|| not_cached(format!("tag {wanted:?}")))?;
            return Ok((body, None, digest));
        }
        PullPolicy::Always => registry.manifest(repo, wanted).await,
        PullPolicy::Missing => match tokio::time::timeout(TAG_BOUND, registry.manifest(repo, wanted)).await {
            Ok(r) => r,
            Err(_) => Err(RegistryError::Status {
                method: "GET".into(),
                url: format!("{} (tag {wanted})", reference.registry),
                status: 504,
                body: format!("no answer within {TAG_BOUND:?}"),
            }),
        },
    };
    match asked {
        Ok((body, content_type, digest)) => {
            if let Some(docs) = docs {
                docs.put(&digest, &body);
                docs.put_tag(&tag, &digest);
            }
            Ok((body, content_type, digest))
        }
        Err(e) if policy == PullPolicy::Missing && e.is_transient() => match cached() {
            Some((body, digest, at)) => {
                let age = at.elapsed().map(|a| a.as_secs()).unwrap_or(0);
                tracing::warn!(
                    error = %e,
                    "the registry cannot be reached: using the last resolution of {tag} ({digest}, {age} s old)"
                );
                Ok((body, None, digest))
            }
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// [`resolve_image`], keeping manifests, configs and tag resolutions in `docs`: a reference
/// by digest whose documents are kept resolves without a single request, a tag as `policy`
/// says.
pub async fn resolve_image_with(
    registry: &Registry,
    reference: &ImageRef,
    platform: &Platform,
    docs: Option<&dyn DocumentStore>,
    policy: PullPolicy,
) -> Result<ResolvedImage> {
    let repo = &reference.repository;
    let mut wanted = reference.manifest_reference();
    let mut depth = 0;
    let (manifest, manifest_digest) = loop {
        let (body, content_type, digest) = manifest_of(registry, reference, &wanted, docs, policy).await?;
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
        None if policy == PullPolicy::Never => {
            return Err(RegistryError::NotCached {
                reference: reference.to_string(),
                what: format!("config {config_digest}"),
            });
        }
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
