//! Sharing profiles through the registry, next to the image and without changing it: a
//! profile is an OCI 1.1 artifact (`artifactType` [`PROFILE_MEDIA_TYPE`], the empty config,
//! one layer: the profile JSON) whose `subject` is the image manifest. It is found through
//! the referrers API where the registry has it, else through the tag-schema fallback: an
//! image index tagged `sha256-<image hex>` listing the referrers (updated on push).
//!
//! Every profile found is parsed as untrusted input; several are merged.

use oci_spec::image::Descriptor;

use super::{Profile, MAX_PROFILE_BYTES, PROFILE_MEDIA_TYPE};
use crate::digest::Digest;
use crate::registry::referrers::{find_artifacts, push_artifact, read_artifact};
use crate::registry::Registry;

pub use crate::registry::referrers::{ArtifactError as ShareError, Pushed};

/// Most profile artifacts read for one image (the newest first).
const MAX_PROFILES_READ: usize = 8;

/// Push `profile` as a referrer of image `image` in `repo`.
pub async fn push(registry: &Registry, repo: &str, image: &Digest, profile: &Profile) -> Result<Pushed, ShareError> {
    let blob = bytes::Bytes::from(profile.to_bytes());
    push_artifact(
        registry,
        repo,
        image,
        PROFILE_MEDIA_TYPE,
        vec![(PROFILE_MEDIA_TYPE, crate::registry::Body::Bytes(blob))],
        Default::default(),
    )
    .await
}

/// The profiles of `image` in `repo`, merged (None: there are none). Artifacts that are not
/// usable profiles are skipped with a warning.
pub async fn find(registry: &Registry, repo: &str, image: &Digest) -> Result<Option<Profile>, ShareError> {
    let candidates = find_artifacts(registry, repo, image, PROFILE_MEDIA_TYPE).await?;
    let mut merged: Option<Profile> = None;
    for d in candidates.iter().take(MAX_PROFILES_READ) {
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
    let (_, bytes) = read_artifact(registry, repo, d, PROFILE_MEDIA_TYPE, MAX_PROFILE_BYTES).await?;
    let name = format!("artifact {}", d.digest());
    let p = Profile::parse(&name, &bytes).map_err(|e| ShareError::Bad(e.to_string()))?;
    if p.image != image.to_string() {
        return Err(ShareError::Bad(format!("{name} profiles another image ({})", p.image)));
    }
    Ok(p)
}
