//! How a request travels: retries with backoff on transport errors, 5xx and 429 (honouring
//! `Retry-After`), redirects followed by hand, one answer to a 401 challenge, and response
//! bodies read up to a limit.
//!
//! ```text
//! call ──► send (retries: transport errors, 5xx, 429; backoff, Retry-After)
//!            └─► send_once (redirects by hand: credentials only to the registry's own origin;
//!                           401 → learn the challenge / refresh the token → one more try)
//! ```
//!
//! Invariants: no response body is read past the limit given for its kind; the Authorization
//! header goes only to the registry's own origin.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, LOCATION};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::client::{Body, Registry};
use super::error::{RegistryError, Result, MAX_ERROR_BODY_BYTES};

/// First backoff delay; doubled per attempt.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest backoff delay, and the longest `Retry-After` honoured.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Redirect hops followed before giving up (blob GETs redirect once to storage, at most twice).
const MAX_REDIRECTS: usize = 5;
/// How long a blob's redirected URL is used before the registry is asked again (presigned
/// object-storage URLs live minutes to hours).
const REDIRECT_REUSE: Duration = Duration::from_secs(300);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response before the request counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Body {
    pub(super) async fn request_body(&self, url: &Url) -> Result<reqwest::Body> {
        match self {
            Body::Bytes(b) => Ok(b.clone().into()),
            Body::File { path, .. } => {
                let file = tokio::fs::File::open(path).await.map_err(|e| RegistryError::Url {
                    url: url.to_string(),
                    reason: format!("opening {} to upload: {e}", path.display()),
                })?;
                Ok(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 * 1024,
                )))
            }
        }
    }
}

impl Registry {
    /// Send with retries on transport errors, 5xx and 429.
    pub(super) async fn send(
        &self,
        scope: &str,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<Body>,
    ) -> Result<Response> {
        if body.is_none() {
            if let Some(resp) = self.try_mirrors(&method, &url, &headers).await {
                return Ok(resp);
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send_once(scope, &method, &url, &headers, body.as_ref()).await;
            if outcome.is_ok() {
                *self.host_requests.lock().entry(self.name.clone()).or_default() += 1;
            }
            let last = attempt >= self.max_attempts;
            let wait = match &outcome {
                Ok(r) if !last && (r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS) => {
                    retry_after(r).unwrap_or_else(|| backoff(attempt))
                }
                Err(e) if !last && e.is_transient() => backoff(attempt),
                _ => return outcome,
            };
            tracing::debug!(%url, attempt, ?wait, "retrying registry request");
            tokio::time::sleep(wait).await;
        }
    }

    /// GETs of manifests and blobs go to the hosts.toml mirrors first, in order
    /// (tag look-ups only to those that may resolve); a mirror that fails — no connection,
    /// an error status, a redirect — is left out for a while and the next one is asked. `None`:
    /// no mirror answered (or none applies), the registry itself is asked.
    async fn try_mirrors(&self, method: &Method, url: &Url, headers: &HeaderMap) -> Option<Response> {
        // GETs only: a HEAD is how a push asks whether the registry itself has a blob, which
        // a mirror cannot answer for it.
        if self.mirrors.is_empty() || method != Method::GET {
            return None;
        }
        let rel = url.path().strip_prefix(self.base.path())?.strip_prefix("v2/")?;
        let (is_blob, is_manifest) = (rel.contains("/blobs/"), rel.contains("/manifests/"));
        if !is_blob && !is_manifest {
            return None;
        }
        let last = rel.rsplit('/').next()?.to_string();
        let by_tag = is_manifest && !last.starts_with("sha256:");
        for (i, m) in self.mirrors.iter().enumerate() {
            if m.is_down() || (by_tag && !m.resolve) {
                continue;
            }
            let Ok(mut target) = m.root.join(rel) else { continue };
            target.query_pairs_mut().append_pair("ns", &self.name);
            let mut req = m
                .client
                .request(method.clone(), target.clone())
                .headers(headers.clone());
            for (k, v) in &m.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    if is_blob {
                        self.served_by.lock().insert(last.clone(), i);
                    }
                    *self.host_requests.lock().entry(m.host()).or_default() += 1;
                    return Some(r);
                }
                Ok(r) => m.mark_down(&format!("HTTP {} for {target}", r.status())),
                Err(e) => m.mark_down(&format!("{e} for {target}")),
            }
        }
        None
    }

    /// One try: follow redirects by hand, answer one 401 challenge.
    async fn send_once(
        &self,
        scope: &str,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&Body>,
    ) -> Result<Response> {
        let original = url.clone();
        let blob_get = method == Method::GET && body.is_none() && url.path().contains("/blobs/sha256:");
        if blob_get {
            if let Some(resp) = self.try_known_redirect(url, headers).await {
                return Ok(resp);
            }
        }
        let mut url = url.clone();
        let mut answered_challenge = false;
        let mut hops = 0;
        loop {
            let same_origin = url.origin() == self.base.origin();
            let mut req = self
                .http()
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if same_origin {
                if let Some(h) = self.auth_header(scope).await? {
                    req = req.header(AUTHORIZATION, h);
                }
            }
            if let Some(b) = body {
                req = req.body(b.request_body(&url).await?);
            }
            let resp = req.send().await.map_err(|error| RegistryError::Transport {
                method: method.to_string(),
                url: url.to_string(),
                error,
            })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin && !answered_challenge {
                answered_challenge = true;
                if self.learn_challenge(scope, &resp)? {
                    continue;
                }
                return Ok(resp);
            }
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                hops += 1;
                let location = header_text(&resp, LOCATION.as_str());
                let next = match location {
                    Some(l) if hops <= MAX_REDIRECTS => join_url(&url, &l)?,
                    Some(_) => {
                        return Err(RegistryError::Redirect {
                            url: url.to_string(),
                            reason: format!("more than {MAX_REDIRECTS} redirects"),
                        })
                    }
                    None => {
                        return Err(RegistryError::Redirect {
                            url: url.to_string(),
                            reason: format!("HTTP {status} without Location"),
                        })
                    }
                };
                url = next;
                continue;
            }
            if blob_get && hops > 0 && resp.status().is_success() && url.origin() != self.base.origin() {
                self.redirects
                    .lock()
                    .insert(original.to_string(), (url.clone(), std::time::Instant::now()));
            }
            return Ok(resp);
        }
    }

    /// A blob GET whose URL redirected to another origin before goes there directly (without
    /// credentials), while that answers and for [`REDIRECT_REUSE`]; then it is resolved again.
    async fn try_known_redirect(&self, url: &Url, headers: &HeaderMap) -> Option<Response> {
        let (target, learned) = self.redirects.lock().get(url.as_str()).cloned()?;
        if learned.elapsed() < REDIRECT_REUSE {
            match self.http().get(target.clone()).headers(headers.clone()).send().await {
                Ok(r) if r.status().is_success() => return Some(r),
                Ok(r) => tracing::debug!(%target, status = %r.status(), "redirected blob URL no longer answers"),
                Err(e) => tracing::debug!(%target, error = %e, "redirected blob URL no longer answers"),
            }
        }
        self.redirects.lock().remove(url.as_str());
        None
    }
}

pub(super) fn http_client(tls: &super::certs::TlsFiles) -> reqwest::Client {
    build_http_client(tls).unwrap_or_else(|e| {
        // Registries with TLS files build their client when made (`try_http_client`), so
        // this is the plain client, whose settings are static.
        panic!("the HTTP client settings are static and valid: {e}")
    })
}

/// The HTTP client with a registry's TLS files, or why they cannot be used.
pub(super) fn build_http_client(tls: &super::certs::TlsFiles) -> std::result::Result<reqwest::Client, String> {
    build_http_client_with(tls, false)
}

/// [`build_http_client`], without checking the server's certificate when `skip_verify`
/// (hosts.toml's `skip_verify`, for a mirror on a private network).
pub(super) fn build_http_client_with(
    tls: &super::certs::TlsFiles,
    skip_verify: bool,
) -> std::result::Result<reqwest::Client, String> {
    // rustls needs one process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Proxies come from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (reqwest reads them).
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("lamina/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(tls.cas.iter().cloned())
        .tls_danger_accept_invalid_certs(skip_verify);
    if let Some(id) = &tls.identity {
        builder = builder.identity(id.clone());
    }
    builder.build().map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s:?}"));
            source = s.source();
        }
        text
    })
}

pub(super) fn join_url(base: &Url, rel: &str) -> Result<Url> {
    base.join(rel).map_err(|e| RegistryError::Url {
        url: format!("{base} + {rel}"),
        reason: e.to_string(),
    })
}

pub(super) fn range_header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).expect("a range made of digits is a valid header")
}

pub(super) fn header_text(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(BACKOFF_MAX)
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = header_text(resp, "retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(BACKOFF_MAX))
}

/// Pass a response whose status is one of `ok`; turn any other into an error with its body.
pub(super) async fn expect(resp: Response, ok: &[StatusCode], method: &str, url: &Url) -> Result<Response> {
    if ok.contains(&resp.status()) {
        Ok(resp)
    } else {
        Err(status_error(resp, method, url).await)
    }
}

pub(super) async fn status_error(resp: Response, method: &str, url: &Url) -> RegistryError {
    let status = resp.status().as_u16();
    RegistryError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        body: error_body(resp).await,
    }
}

pub(super) async fn error_body(resp: Response) -> String {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= MAX_ERROR_BODY_BYTES {
            out.truncate(MAX_ERROR_BODY_BYTES);
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Read a body into memory, failing once it passes `limit_bytes`.
pub(super) async fn read_limited(resp: Response, limit_bytes: u64, url: &Url, what: &'static str) -> Result<Bytes> {
    if resp.content_length().is_some_and(|n| n > limit_bytes) {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            what,
            limit_bytes,
        });
    }
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| RegistryError::Transport {
            method: "GET".into(),
            url: url.to_string(),
            error,
        })?;
        if out.len() as u64 + chunk.len() as u64 > limit_bytes {
            return Err(RegistryError::TooLarge {
                url: url.to_string(),
                what,
                limit_bytes,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
