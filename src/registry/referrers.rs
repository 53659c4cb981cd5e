//! The OCI 1.1 referrers API: which artifacts name a manifest as their `subject`
//! (`GET /v2/<name>/referrers/<digest>`). Registries without it (distribution 2.8) answer 404;
//! callers then use the tag-schema fallback (`sha256-<hex>`, [`fallback_tag`]).

use oci_spec::image::ImageIndex;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use super::client::{scope, Access, Registry};
use super::error::{RegistryError, Result};
use super::manifest::MAX_MANIFEST_BYTES;
use super::transport::{read_limited, status_error};
use crate::digest::Digest;

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
