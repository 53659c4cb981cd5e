//! Reading blobs: whole small blobs into memory (verified), streams from an offset (for
//! resumable downloads), byte ranges (for chunks and TOCs), and existence checks.
//!
//! Invariants: a whole blob returned matched its digest; every partial read had its
//! `Content-Range` checked, or was cut from a 200 answer that ignored the Range.

use bytes::Bytes;
use reqwest::header::{HeaderMap, RANGE};
use reqwest::{Method, Response, StatusCode};

use crate::digest::Digest;
use crate::registry::client::{scope, Access, Registry};
use crate::registry::error::{RegistryError, Result};
use crate::registry::transport::{expect, header_text, range_header, read_limited, status_error};

/// A blob body being streamed, and whether it is the asked-for tail (206) or the whole blob.
pub struct BlobStream {
    /// The response; read it with `bytes_stream`.
    pub response: Response,
    /// True when the registry honoured the Range and the body starts at the asked offset.
    pub partial: bool,
    /// The URL, for errors.
    pub url: String,
}

impl Registry {
    /// A whole small blob (config, TOC), read into memory up to `limit_bytes` and verified.
    pub async fn blob_bytes(&self, repo: &str, digest: &Digest, limit_bytes: u64) -> Result<Bytes> {
        let url = self.blob_url(repo, digest)?;
        let resp = self
            .send(
                &scope(repo, Access::Pull),
                Method::GET,
                url.clone(),
                HeaderMap::new(),
                None,
            )
            .await?;
        let resp = expect(resp, &[StatusCode::OK], "GET", &url).await?;
        let body = read_limited(resp, limit_bytes, &url, "blob").await?;
        let actual = Digest::of(&body);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("blob {url}"),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(body)
    }

    /// Start streaming a blob from byte `offset` (a `Range` request when `offset > 0`). The
    /// caller checks the digest of the whole; a 200 answer to a Range means the body starts
    /// at byte 0 (`partial == false`).
    pub async fn blob_stream(&self, repo: &str, digest: &Digest, offset: u64) -> Result<BlobStream> {
        let url = self.blob_url(repo, digest)?;
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(RANGE, range_header(&format!("bytes={offset}-")));
        }
        let resp = self
            .send(&scope(repo, Access::Pull), Method::GET, url.clone(), headers, None)
            .await?;
        let resp = expect(resp, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT], "GET", &url).await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        if partial {
            let got = header_text(&resp, "content-range").unwrap_or_default();
            match parse_content_range(&got) {
                Some((start, _, _)) if start == offset => {}
                _ => {
                    return Err(RegistryError::BadRange {
                        url: url.to_string(),
                        start: offset,
                        end_inclusive: u64::MAX,
                        got,
                    })
                }
            }
        }
        Ok(BlobStream {
            response: resp,
            partial,
            url: url.to_string(),
        })
    }

    /// Bytes `start .. start + len` of a blob (one Range request). A registry that ignores
    /// Range and answers 200 still gives the right bytes, cut from the full body.
    pub async fn blob_range(&self, repo: &str, digest: &Digest, start: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = start + len - 1;
        let url = self.blob_url(repo, digest)?;
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, range_header(&format!("bytes={start}-{end}")));
        let resp = self
            .send(&scope(repo, Access::Pull), Method::GET, url.clone(), headers, None)
            .await?;
        let resp = expect(resp, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT], "GET", &url).await?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let got = header_text(&resp, "content-range").unwrap_or_default();
            if !matches!(parse_content_range(&got), Some((s, e, _)) if s == start && e == end) {
                return Err(RegistryError::BadRange {
                    url: url.to_string(),
                    start,
                    end_inclusive: end,
                    got,
                });
            }
            let body = read_limited(resp, len, &url, "range").await?;
            if body.len() as u64 != len {
                return Err(RegistryError::SizeMismatch {
                    what: format!("range {start}-{end} of {url}"),
                    expected: len,
                    actual: body.len() as u64,
                });
            }
            return Ok(body);
        }
        let body = read_limited(resp, end.saturating_add(1), &url, "range (full answer)").await?;
        if (body.len() as u64) < end + 1 {
            return Err(RegistryError::SizeMismatch {
                what: format!("range {start}-{end} of {url} (registry sent the whole blob)"),
                expected: end + 1,
                actual: body.len() as u64,
            });
        }
        Ok(body.slice(start as usize..=end as usize))
    }

    /// Whether the repository already has the blob (`HEAD`).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest, access: Access) -> Result<bool> {
        let url = self.blob_url(repo, digest)?;
        let resp = self
            .send(&scope(repo, access), Method::HEAD, url.clone(), HeaderMap::new(), None)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(resp, "HEAD", &url).await),
        }
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (start, end, total).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (s <= e && total.is_none_or(|t| e < t)).then_some((s, e, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let cases = [
            ("bytes 0-9/100", Some((0, 9, Some(100)))),
            ("bytes 10-19/*", Some((10, 19, None))),
            ("bytes 10-9/100", None),
            ("bytes 0-100/100", None),
            ("bytes=0-9/100", None),
            ("bytes 0-9", None),
            ("bytes a-9/100", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_content_range(v), want, "{v}");
        }
    }
}
