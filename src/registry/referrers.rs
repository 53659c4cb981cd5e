//! The OCI 1.1 referrers API: which artifacts name a manifest as their `subject`
//! (`GET /v2/<name>/referrers/<digest>`). Registries without it (distribution 2.8) answer 404;
//! callers then use the tag-schema fallback (`sha256-<hex>`, [`fallback_tag`]).
//!
//! Artifacts lamina shares next to an image without changing it (access profiles, gzip
//! indexes) are OCI 1.1 artifacts: `artifactType` of their own, the empty config, one layer,
//! `subject` = the image manifest ([`push_artifact`], [`find_artifacts`], [`read_artifact`]).

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use super::client::{scope, Access, Registry};
use super::error::{RegistryError, Result};
use super::manifest::MAX_MANIFEST_BYTES;
use super::transport::{read_limited, status_error};
use super::Body;
use crate::digest::Digest;
use crate::oci::document::{self, Annotations};
use crate::oci::media_types::{OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};

/// The tag under which the referrers of `subject` are listed on registries without the API.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

impl Registry {
    /// The referrers of `subject` with `artifact_type`, or `None` when the registry has no
    /// referrers API.
    pub async fn referrers(&self, repo: &str, subject: &Digest, artifact_type: &str) -> Result<Option<ImageIndex>> {
        let mut url = self.url(&format!("v2/{repo}/referrers/{subject}"))?;
        url.query_pairs_mut().append_pair("artifactType", artifact_type);
        let resp = self
            .send(
                &scope(repo, Access::Pull),
                Method::GET,
                url.clone(),
                HeaderMap::new(),
                None,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => return Ok(None),
            _ => return Err(status_error(resp, "GET", &url).await),
        }
        let body = read_limited(resp, MAX_MANIFEST_BYTES, &url, "referrers index").await?;
        let index: ImageIndex = serde_json::from_slice(&body).map_err(|e| RegistryError::BadManifest {
            reference: url.to_string(),
            reason: format!("referrers index: {e}"),
        })?;
        Ok(Some(index))
    }
}

/// How an artifact push reached the registry.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The registry lists referrers itself.
    Referrers(Digest),
    /// Listed in the `sha256-<hex>` tag's index.
    FallbackTag(Digest, String),
}

/// Why an artifact push or look-up failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A document the registry gave back is not what it should be.
    #[error("{0}")]
    Bad(String),
}

/// Annotation with an artifact's creation time (RFC 3339), used to order them.
pub const CREATED: &str = "org.opencontainers.image.created";

/// The image manifest `image` of `repo` as a descriptor (for `subject`).
async fn subject(registry: &Registry, repo: &str, image: &Digest) -> std::result::Result<Descriptor, ArtifactError> {
    let (body, content_type, digest) = registry.manifest(repo, &image.to_string()).await?;
    let media_type = content_type.unwrap_or_else(|| OCI_MANIFEST.to_string());
    Ok(document::descriptor(&media_type, &digest, body.len() as u64, None))
}

/// Push `layers` (media type, bytes) as an OCI 1.1 artifact of `artifact_type` whose subject
/// is image `image` of `repo`: the empty config, the layers, `annotations` plus its creation
/// time. Registries without the referrers API get it listed in the fallback tag's index.
pub async fn push_artifact(
    registry: &Registry,
    repo: &str,
    image: &Digest,
    artifact_type: &str,
    layers: Vec<(&str, Body)>,
    mut annotations: Annotations,
) -> std::result::Result<Pushed, ArtifactError> {
    let subject = subject(registry, repo, image).await?;
    let mut descriptors = Vec::with_capacity(layers.len());
    for (media_type, body) in layers {
        let (blob_digest, size) = match &body {
            Body::Bytes(b) => (Digest::of(b), b.len() as u64),
            Body::File { path, len_bytes } => {
                let file =
                    std::fs::File::open(path).map_err(|e| ArtifactError::Bad(format!("{}: {e}", path.display())))?;
                let mut h = crate::digest::HashingReader::new(file);
                std::io::copy(&mut h, &mut std::io::sink())
                    .map_err(|e| ArtifactError::Bad(format!("{}: {e}", path.display())))?;
                (h.finish().0, *len_bytes)
            }
        };
        descriptors.push(document::descriptor(media_type, &blob_digest, size, None));
        registry.upload_blob(repo, &blob_digest, body).await?;
    }
    let empty = Bytes::from_static(b"{}");
    let empty_digest = Digest::of(&empty);
    registry
        .upload_blob(repo, &empty_digest, Body::Bytes(empty.clone()))
        .await?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    annotations.insert(CREATED.to_string(), now);
    let config = document::descriptor(OCI_EMPTY, &empty_digest, empty.len() as u64, None);
    let manifest = document::image_manifest(
        config,
        descriptors,
        Some(annotations.clone()),
        Some(artifact_type),
        Some(subject),
    );
    let body = Bytes::from(document::canonical_json(&manifest).map_err(|e| ArtifactError::Bad(e.to_string()))?);
    let size = body.len() as u64;
    let digest = registry
        .put_manifest(repo, &Digest::of(&body).to_string(), OCI_MANIFEST, body)
        .await?;
    if registry.referrers(repo, image, artifact_type).await?.is_some() {
        return Ok(Pushed::Referrers(digest));
    }
    // No referrers API: list the artifact in the fallback tag's index.
    let tag = fallback_tag(image);
    let mut index = fallback_index(registry, repo, image)
        .await?
        .unwrap_or_else(|| document::image_index(Vec::new()));
    let mut manifests = index.manifests().clone();
    manifests.retain(|d| d.digest().to_string() != digest.to_string());
    let mut d = document::descriptor(OCI_MANIFEST, &digest, size, Some(annotations));
    d.set_artifact_type(Some(artifact_type.into()));
    manifests.push(d);
    index.set_manifests(manifests);
    let body = Bytes::from(document::canonical_json(&index).map_err(|e| ArtifactError::Bad(e.to_string()))?);
    registry.put_manifest(repo, &tag, OCI_INDEX, body).await?;
    Ok(Pushed::FallbackTag(digest, tag))
}

/// The fallback tag's index for `image`, if there is one.
async fn fallback_index(
    registry: &Registry,
    repo: &str,
    image: &Digest,
) -> std::result::Result<Option<ImageIndex>, ArtifactError> {
    match registry.manifest(repo, &fallback_tag(image)).await {
        Ok((body, _, _)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ArtifactError::Bad(format!("{}: not an image index: {e}", fallback_tag(image)))),
        Err(RegistryError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The artifacts of `artifact_type` naming image `image` of `repo`, newest first (through the
/// referrers API, else the fallback tag).
pub async fn find_artifacts(
    registry: &Registry,
    repo: &str,
    image: &Digest,
    artifact_type: &str,
) -> std::result::Result<Vec<Descriptor>, ArtifactError> {
    let listed = match registry.referrers(repo, image, artifact_type).await? {
        Some(index) => index,
        None => match fallback_index(registry, repo, image).await? {
            Some(index) => index,
            None => return Ok(Vec::new()),
        },
    };
    let mut found: Vec<Descriptor> = listed
        .manifests()
        .iter()
        .filter(|d| d.artifact_type().as_ref().map(|t| t.to_string()).as_deref() == Some(artifact_type))
        .cloned()
        .collect();
    let created = |d: &Descriptor| -> String {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(CREATED))
            .cloned()
            .unwrap_or_default()
    };
    found.sort_by_key(|d| std::cmp::Reverse(created(d)));
    Ok(found)
}

/// The artifact `artifact` lists: its manifest's annotations and the bytes of its layer of
/// `media_type` (at most `max_bytes`).
pub async fn read_artifact(
    registry: &Registry,
    repo: &str,
    artifact: &Descriptor,
    media_type: &str,
    max_bytes: u64,
) -> std::result::Result<(Annotations, Bytes), ArtifactError> {
    let digest: Digest = artifact
        .digest()
        .to_string()
        .parse()
        .map_err(|e| ArtifactError::Bad(format!("{e}")))?;
    let (body, _, _) = registry.manifest(repo, &digest.to_string()).await?;
    let manifest: ImageManifest =
        serde_json::from_slice(&body).map_err(|e| ArtifactError::Bad(format!("artifact {digest}: {e}")))?;
    let layer = manifest
        .layers()
        .iter()
        .find(|l| l.media_type().to_string() == media_type)
        .ok_or_else(|| ArtifactError::Bad(format!("artifact {digest} has no {media_type} layer")))?;
    if layer.size() > max_bytes {
        return Err(ArtifactError::Bad(format!(
            "artifact {digest}: layer of {} bytes is over the {max_bytes}-byte cap",
            layer.size()
        )));
    }
    let blob: Digest = layer
        .digest()
        .to_string()
        .parse()
        .map_err(|e| ArtifactError::Bad(format!("{e}")))?;
    let bytes = registry.blob_bytes(repo, &blob, max_bytes).await?;
    Ok((manifest.annotations().clone().unwrap_or_default(), bytes))
}
