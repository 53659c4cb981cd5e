//! Writing blobs: monolithic upload (skipped when the repository has the blob) and
//! cross-repository mount.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};

use crate::digest::Digest;
use crate::registry::client::{scope, Access, Body, Registry};
use crate::registry::error::{RegistryError, Result};
use crate::registry::transport::{expect, header_text, join_url};

impl Registry {
    /// Upload a blob (monolithic POST + PUT) unless the repository has it already. The body is
    /// in memory or streamed from a file (re-opened for each retry).
    pub async fn upload_blob(&self, repo: &str, digest: &Digest, data: Body) -> Result<()> {
        if self.blob_exists(repo, digest, Access::Push).await? {
            return Ok(());
        }
        let sc = scope(repo, Access::Push);
        let start = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .send(
                &sc,
                Method::POST,
                start.clone(),
                HeaderMap::new(),
                Some(Body::Bytes(Bytes::new())),
            )
            .await?;
        let resp = expect(resp, &[StatusCode::ACCEPTED], "POST", &start).await?;
        let location = header_text(&resp, LOCATION.as_str()).ok_or_else(|| RegistryError::Redirect {
            url: start.to_string(),
            reason: "upload started without a Location header".into(),
        })?;
        let mut put = join_url(&start, &location)?;
        put.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        if let Body::File { len_bytes, .. } = &data {
            headers.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(*len_bytes));
        }
        let resp = self.send(&sc, Method::PUT, put.clone(), headers, Some(data)).await?;
        expect(resp, &[StatusCode::CREATED], "PUT", &put).await.map(drop)
    }

    /// Ask the registry to link blob `digest` of repository `from` into `repo` without
    /// sending it (cross-repository mount). Ok(true) when it did; Ok(false) when the registry
    /// answered by starting an ordinary upload instead (the blob must then be sent).
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let sc = format!("{} {}", scope(repo, Access::Push), scope(from, Access::Pull));
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let resp = self
            .send(
                &sc,
                Method::POST,
                url.clone(),
                HeaderMap::new(),
                Some(Body::Bytes(Bytes::new())),
            )
            .await?;
        let resp = expect(resp, &[StatusCode::CREATED, StatusCode::ACCEPTED], "POST", &url).await?;
        Ok(resp.status() == StatusCode::CREATED)
    }
}
