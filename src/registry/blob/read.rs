//! Reading blobs: whole small blobs into memory (verified), streams from an offset (for
//! resumable downloads), byte ranges (for chunks and TOCs), and existence checks.
//!
//! Invariants: a whole blob returned matched its digest; every partial read had its
//! `Content-Range` checked, or was cut from a 200 answer that ignored the Range.

use bytes::Bytes;
use futures_util::StreamExt;
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

/// Most bytes reserved up front for a range read into memory (the rest grows as it arrives).
const MAX_PREALLOCATED_BYTES: u64 = 8 << 20;

type BodyStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The bytes of one range of a blob, arriving: exactly `len` bytes, or an error.
pub struct RangeStream {
    body: Option<BodyStream>,
    /// Bytes still to skip (a 200 answer starts at byte 0 of the blob).
    skip: u64,
    /// Bytes of the range still to come.
    left: u64,
    len: u64,
    url: String,
}

impl RangeStream {
    fn empty(url: String) -> RangeStream {
        RangeStream {
            body: None,
            skip: 0,
            left: 0,
            len: 0,
            url,
        }
    }

    /// The next piece of the range; `None` once all of it came. A body that ends early is a
    /// `SizeMismatch`; bytes past the range are never returned.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        while self.left > 0 {
            let Some(body) = self.body.as_mut() else { break };
            let piece = match body.next().await {
                None => break,
                Some(Err(error)) => {
                    return Err(RegistryError::Transport {
                        method: "GET".into(),
                        url: self.url.clone(),
                        error,
                    })
                }
                Some(Ok(p)) => p,
            };
            let mut piece = piece;
            let k = self.skip.min(piece.len() as u64) as usize;
            self.skip -= k as u64;
            let piece = piece.split_off(k);
            if piece.is_empty() {
                continue;
            }
            let take = self.left.min(piece.len() as u64) as usize;
            self.left -= take as u64;
            if self.left == 0 {
                // Done: drop the body so a whole-blob answer is not read on.
                self.body = None;
            }
            return Ok(Some(piece.slice(..take)));
        }
        if self.left > 0 {
            return Err(RegistryError::SizeMismatch {
                what: format!("range of {} bytes from {}", self.len, self.url),
                expected: self.len,
                actual: self.len - self.left,
            });
        }
        Ok(None)
    }
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

    /// Bytes `start .. start + len` of a blob (one Range request), in memory. A registry that
    /// ignores Range and answers 200 still gives the right bytes, cut from the full body as it
    /// streams by (never more than `len` bytes are kept).
    pub async fn blob_range(&self, repo: &str, digest: &Digest, start: u64, len: u64) -> Result<Bytes> {
        let mut stream = self.blob_range_stream(repo, digest, start, len).await?;
        let mut out = bytes::BytesMut::with_capacity(len.min(MAX_PREALLOCATED_BYTES) as usize);
        while let Some(piece) = stream.next().await? {
            out.extend_from_slice(&piece);
        }
        Ok(out.freeze())
    }

    /// Start reading bytes `start .. start + len` of a blob (one Range request); the body is
    /// read piece by piece with [`RangeStream::next`], so a caller can use the first bytes
    /// before the last arrive.
    pub async fn blob_range_stream(&self, repo: &str, digest: &Digest, start: u64, len: u64) -> Result<RangeStream> {
        let end = start + len.max(1) - 1;
        let url = self.blob_url(repo, digest)?;
        if len == 0 {
            return Ok(RangeStream::empty(url.to_string()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, range_header(&format!("bytes={start}-{end}")));
        let resp = self
            .send(&scope(repo, Access::Pull), Method::GET, url.clone(), headers, None)
            .await?;
        let resp = expect(resp, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT], "GET", &url).await?;
        let skip = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let got = header_text(&resp, "content-range").unwrap_or_default();
            if !matches!(parse_content_range(&got), Some((s, e, _)) if s == start && e == end) {
                return Err(RegistryError::BadRange {
                    url: url.to_string(),
                    start,
                    end_inclusive: end,
                    got,
                });
            }
            0
        } else {
            // The whole blob: skip to `start` as it streams by.
            start
        };
        Ok(RangeStream {
            body: Some(Box::pin(resp.bytes_stream())),
            skip,
            left: len,
            len,
            url: url.to_string(),
        })
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
