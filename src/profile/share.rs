//! Sharing profiles through the registry, next to the image and without changing it: a
//! profile is an OCI 1.1 artifact (`artifactType` [`PROFILE_MEDIA_TYPE`], the empty config,
//! one layer: the profile JSON) whose `subject` is the image manifest. It is found through
//! the referrers API where the registry has it, else through the tag-schema fallback: an
//! image index tagged `sha256-<image hex>` listing the referrers (updated on push).
//!
//! Every profile found is parsed as untrusted input; several are merged.

use std::collections::HashMap;

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::{Profile, MAX_PROFILE_BYTES, PROFILE_MEDIA_TYPE};
use crate::digest::Digest;
use crate::oci::document::{self, Annotations};
use crate::oci::media_types::{OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use crate::registry::manifest::MAX_MANIFEST_BYTES;
use crate::registry::referrers::fallback_tag;
use crate::registry::{Body, Registry, RegistryError};

/// Most profile artifacts read for one image (the newest first).
const MAX_PROFILES_READ: usize = 8;
/// Annotation with the artifact's creation time (RFC 3339), used to order them.
const CREATED: &str = "org.opencontainers.image.created";

/// How a push reached the registry.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The registry lists referrers itself.
    Referrers(Digest),
    /// Listed in the `sha256-<hex>` tag's index.
    FallbackTag(Digest, String),
}

/// Why a push or a look-up failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A document the registry gave back is not what it should be.
    #[error("{0}")]
    Bad(String),
}

/// The image manifest `image` of `repo` as a descriptor (for `subject`).
async fn subject(registry: &Registry, repo: &str, image: &Digest) -> Result<Descriptor, ShareError> {
    let (body, content_type, digest) = registry.manifest(repo, &image.to_string()).await?;
    let media_type = content_type.unwrap_or_else(|| OCI_MANIFEST.to_string());
    Ok(document::descriptor(&media_type, &digest, body.len() as u64, None))
}

/// Push `profile` as a referrer of image `image` in `repo`.
pub async fn push(registry: &Registry, repo: &str, image: &Digest, profile: &Profile) -> Result<Pushed, ShareError> {
    let subject = subject(registry, repo, image).await?;
    let blob = Bytes::from(profile.to_bytes());
    let blob_digest = Digest::of(&blob);
    registry
        .upload_blob(repo, &blob_digest, Body::Bytes(blob.clone()))
        .await?;
    let empty = Bytes::from_static(b"{}");
    let empty_digest = Digest::of(&empty);
    registry
        .upload_blob(repo, &empty_digest, Body::Bytes(empty.clone()))
        .await?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let annotations: Annotations = [(CREATED.to_string(), now)].into();
    let layer = document::descriptor(PROFILE_MEDIA_TYPE, &blob_digest, blob.len() as u64, None);
    let config = document::descriptor(OCI_EMPTY, &empty_digest, empty.len() as u64, None);
    let manifest = document::image_manifest(
        config,
        vec![layer],
        Some(annotations.clone()),
        Some(PROFILE_MEDIA_TYPE),
        Some(subject),
    );
    let body = Bytes::from(document::canonical_json(&manifest).map_err(|e| ShareError::Bad(e.to_string()))?);
    let size = body.len() as u64;
    let digest = registry
        .put_manifest(repo, &Digest::of(&body).to_string(), OCI_MANIFEST, body)
        .await?;
    if registry.referrers(repo, image, PROFILE_MEDIA_TYPE).await?.is_some() {
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
    d.set_artifact_type(Some(PROFILE_MEDIA_TYPE.into()));
    manifests.push(d);
    index.set_manifests(manifests);
    let body = Bytes::from(document::canonical_json(&index).map_err(|e| ShareError::Bad(e.to_string()))?);
    registry.put_manifest(repo, &tag, OCI_INDEX, body).await?;
    Ok(Pushed::FallbackTag(digest, tag))
}

/// The fallback tag's index for `image`, if there is one.
async fn fallback_index(registry: &Registry, repo: &str, image: &Digest) -> Result<Option<ImageIndex>, ShareError> {
    match registry.manifest(repo, &fallback_tag(image)).await {
        Ok((body, _, _)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ShareError::Bad(format!("{}: not an image index: {e}", fallback_tag(image)))),
        Err(RegistryError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The profiles of `image` in `repo`, merged (None: there are none). Artifacts that are not
/// usable profiles are skipped with a warning.
pub async fn find(registry: &Registry, repo: &str, image: &Digest) -> Result<Option<Profile>, ShareError> {
    let listed = match registry.referrers(repo, image, PROFILE_MEDIA_TYPE).await? {
        Some(index) => index,
        None => match fallback_index(registry, repo, image).await? {
            Some(index) => index,
            None => return Ok(None),
        },
    };
    let mut candidates: Vec<&Descriptor> = listed
        .manifests()
        .iter()
        .filter(|d| d.artifact_type().as_ref().map(|t| t.to_string()).as_deref() == Some(PROFILE_MEDIA_TYPE))
        .collect();
    let created = |d: &Descriptor| -> String {
        let none = HashMap::new();
        d.annotations()
            .as_ref()
            .unwrap_or(&none)
            .get(CREATED)
            .cloned()
            .unwrap_or_default()
    };
    candidates.sort_by_key(|d| std::cmp::Reverse(created(d)));
    let mut merged: Option<Profile> = None;
    for d in candidates.into_iter().take(MAX_PROFILES_READ) {
        match read_one(registry, repo, image, d).await {
            Ok(p) => match merged.as_mut() {
                Some(m) => m.merge(&p),
                None => merged = Some(p),
            },
            Err(e) => tracing::warn!(artifact = %d.digest(), error = %e, "skipping a profile artifact"),
        }
    }
    Ok(merged)
}

async fn read_one(registry: &Registry, repo: &str, image: &Digest, d: &Descriptor) -> Result<Profile, ShareError> {
    let digest: Digest = d
        .digest()
        .to_string()
        .parse()
        .map_err(|e| ShareError::Bad(format!("{e}")))?;
    let (body, _, _) = registry.manifest(repo, &digest.to_string()).await?;
    if body.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ShareError::Bad("artifact manifest too large".into()));
    }
    let manifest: ImageManifest =
        serde_json::from_slice(&body).map_err(|e| ShareError::Bad(format!("artifact {digest}: {e}")))?;
    let layer = manifest
        .layers()
        .iter()
        .find(|l| l.media_type().to_string() == PROFILE_MEDIA_TYPE)
        .ok_or_else(|| ShareError::Bad(format!("artifact {digest} has no profile layer")))?;
    if layer.size() > MAX_PROFILE_BYTES {
        return Err(ShareError::Bad(format!(
            "artifact {digest}: profile of {} bytes",
            layer.size()
        )));
    }
    let blob: Digest = layer
        .digest()
        .to_string()
        .parse()
        .map_err(|e| ShareError::Bad(format!("{e}")))?;
    let bytes = registry.blob_bytes(repo, &blob, MAX_PROFILE_BYTES).await?;
    let p = Profile::parse(&format!("artifact {digest}"), &bytes).map_err(|e| ShareError::Bad(e.to_string()))?;
    if p.image != image.to_string() {
        return Err(ShareError::Bad(format!(
            "artifact {digest} profiles another image ({})",
            p.image
        )));
    }
    Ok(p)
}
