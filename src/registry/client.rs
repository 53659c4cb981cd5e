//! The HTTP side of the OCI distribution spec: one [`Registry`] per registry host, with auth,
//! retries, redirects, digest checks and size limits.
//!
//! ```text
//! call ──► send (retries: transport errors, 5xx, 429; backoff, Retry-After)
//!            └─► send_once (redirects by hand: credentials only to the registry's own origin;
//!                           401 → learn the challenge / refresh the token → one more try)
//! ```
//!
//! Invariants: every manifest and whole blob returned has been checked against its digest; every
//! partial read has had its `Content-Range` checked (or was cut from a 200 answer); no response
//! body is read past the limit given for its kind; credentials never go to another origin.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{self, AuthState, Challenge, Credentials, TokenResponse};
use super::error::{RegistryError, Result, MAX_ERROR_BODY_BYTES};
use super::manifest::ACCEPTED_MANIFEST_TYPES;
use crate::digest::{Digest, Hasher};

/// How many times a request is tried before its error is returned.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First backoff delay; doubled per attempt.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest backoff delay, and the longest `Retry-After` honoured.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Redirect hops followed before giving up (blob GETs redirect once to storage, at most twice).
const MAX_REDIRECTS: usize = 5;
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response before the request counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token endpoint answer accepted.
const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Settings shared by every registry a command talks to.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Hosts (with port if given so) reached over plain HTTP although not on loopback.
    pub insecure_registries: Vec<String>,
    /// Attempts per request.
    pub max_attempts: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Access wanted to a repository, for token scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Pull,
    /// Read and write.
    Push,
}

/// A client for one registry host.
pub struct Registry {
    name: String,
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
    max_attempts: u32,
}

/// A request body that can be sent again on retry.
#[derive(Clone, Debug)]
pub enum Body {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file streamed from disk.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Its length.
        len_bytes: u64,
    },
}

impl Body {
    async fn request_body(&self, url: &Url) -> Result<reqwest::Body> {
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
    /// A client for `name` (as written in an image reference) served at `api_host`.
    /// Credentials come from the Docker config file.
    pub fn new(name: &str, api_host: &str, options: &ClientOptions) -> Result<Registry> {
        let credentials = auth::credentials_for(name)?;
        Self::with_credentials(name, api_host, options, credentials)
    }

    /// Like [`Registry::new`] with explicit credentials.
    pub fn with_credentials(
        name: &str,
        api_host: &str,
        options: &ClientOptions,
        credentials: Option<Credentials>,
    ) -> Result<Registry> {
        let scheme = if uses_plain_http(api_host, &options.insecure_registries)
            || uses_plain_http(name, &options.insecure_registries)
        {
            "http"
        } else {
            "https"
        };
        let text = format!("{scheme}://{api_host}/");
        let base = Url::parse(&text).map_err(|e| RegistryError::Url {
            url: text.clone(),
            reason: e.to_string(),
        })?;
        Ok(Registry {
            name: name.to_string(),
            base,
            http: http_client(),
            credentials,
            auth: Mutex::new(AuthState::default()),
            max_attempts: options.max_attempts.max(1),
        })
    }

    /// The registry's name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `GET /v2/`: is this a registry, and may we talk to it?
    pub async fn ping(&self) -> Result<()> {
        let url = self.url("v2/")?;
        let resp = self
            .send("registry:catalog:*", Method::GET, url.clone(), HeaderMap::new(), None)
            .await?;
        expect(resp, &[StatusCode::OK], "GET", &url).await.map(drop)
    }

    /// Fetch a manifest or index by tag or digest. Returns the body, its content type and its
    /// digest (checked against the reference when that is a digest, and against
    /// `Docker-Content-Digest` when the registry sends it).
    pub async fn manifest(&self, repo: &str, reference: &str) -> Result<(Bytes, Option<String>, Digest)> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(&ACCEPTED_MANIFEST_TYPES.join(", ")).expect("static header"),
        );
        let resp = self
            .send(&scope(repo, Access::Pull), Method::GET, url.clone(), headers, None)
            .await?;
        let resp = expect(resp, &[StatusCode::OK], "GET", &url).await?;
        let content_type = header_text(&resp, CONTENT_TYPE.as_str());
        let header_digest = header_text(&resp, "docker-content-digest");
        let body = read_limited(resp, super::manifest::MAX_MANIFEST_BYTES, &url, "manifest").await?;
        let actual = Digest::of(&body);
        let expected = match reference.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => header_digest.and_then(|h| h.parse().ok()),
        };
        if let Some(expected) = expected {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {url}"),
                    expected,
                    actual,
                });
            }
        }
        Ok((body, content_type, actual))
    }

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

    /// Upload a manifest under `reference` (tag or digest); returns its digest.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: Bytes) -> Result<Digest> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::UnsupportedMediaType {
                what: "manifest upload".into(),
                media_type: media_type.into(),
                supported: ACCEPTED_MANIFEST_TYPES.join(", "),
            })?,
        );
        let digest = Digest::of(&body);
        let resp = self
            .send(
                &scope(repo, Access::Push),
                Method::PUT,
                url.clone(),
                headers,
                Some(Body::Bytes(body)),
            )
            .await?;
        expect(resp, &[StatusCode::CREATED], "PUT", &url).await?;
        Ok(digest)
    }

    fn url(&self, path: &str) -> Result<Url> {
        join_url(&self.base, path)
    }

    fn blob_url(&self, repo: &str, digest: &Digest) -> Result<Url> {
        self.url(&format!("v2/{repo}/blobs/{digest}"))
    }

    /// Send with retries on transport errors, 5xx and 429.
    async fn send(
        &self,
        scope: &str,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<Body>,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send_once(scope, &method, &url, &headers, body.as_ref()).await;
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

    /// One try: follow redirects by hand, answer one 401 challenge.
    async fn send_once(
        &self,
        scope: &str,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&Body>,
    ) -> Result<Response> {
        let mut url = url.clone();
        let mut answered_challenge = false;
        let mut hops = 0;
        loop {
            let same_origin = url.origin() == self.base.origin();
            let mut req = self.http.request(method.clone(), url.clone()).headers(headers.clone());
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
            return Ok(resp);
        }
    }

    /// Take in a 401's challenge. Returns whether a retry can succeed.
    fn learn_challenge(&self, scope: &str, resp: &Response) -> Result<bool> {
        let value = header_text(resp, WWW_AUTHENTICATE.as_str()).unwrap_or_default();
        let Some(challenge) = auth::parse_challenge(&value) else {
            return Err(RegistryError::Auth {
                registry: self.name.clone(),
                reason: format!("HTTP 401 with an unusable WWW-Authenticate {value:?}"),
            });
        };
        let mut state = self.auth.lock();
        let had_token = state.token(scope).is_some();
        state.drop_token(scope);
        let retry = match &challenge {
            Challenge::Basic => self.credentials.is_some() && state.challenge != Some(Challenge::Basic),
            Challenge::Bearer { .. } => true,
        };
        tracing::debug!(registry = %self.name, ?challenge, had_token, "registry asked for authentication");
        state.challenge = Some(challenge);
        Ok(retry)
    }

    /// The Authorization header for `scope`, fetching a token when needed.
    async fn auth_header(&self, scope: &str) -> Result<Option<String>> {
        let (challenge, token) = {
            let state = self.auth.lock();
            (state.challenge.clone(), state.token(scope))
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(Credentials::basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(t) = token {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self.fetch_token(&realm, service.as_deref(), scope).await?;
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Ask the token endpoint named by the challenge for a token for `scope`.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let auth_err = |reason: String| RegistryError::Auth {
            registry: self.name.clone(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| auth_err(format!("bad token realm {realm:?}: {e}")))?;
        if url.scheme() != "https" && !is_loopback(url.host_str().unwrap_or_default()) && self.base.scheme() == "https"
        {
            return Err(auth_err(format!(
                "token realm {realm} is not HTTPS; refusing to send credentials"
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // Several scopes (a cross-repository mount) go as several parameters.
            for one in scope.split(' ') {
                q.append_pair("scope", one);
            }
        }
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut req = self.http.get(url.clone());
            if let Some(c) = &self.credentials {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            match req.send().await {
                Ok(r) if r.status().is_server_error() && attempt < self.max_attempts => {}
                Ok(r) => break r,
                Err(error) if attempt >= self.max_attempts => {
                    return Err(RegistryError::Transport {
                        method: "GET".into(),
                        url: url.to_string(),
                        error,
                    })
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff(attempt)).await;
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = error_body(resp).await;
            return Err(auth_err(format!("token endpoint {url} answered HTTP {status}: {body}")));
        }
        let body = read_limited(resp, MAX_TOKEN_BYTES, &url, "token response").await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| auth_err(format!("token endpoint {url}: bad JSON: {e}")))?;
        self.auth
            .lock()
            .store_token(scope, parsed)
            .ok_or_else(|| auth_err(format!("token endpoint {url} gave no token")))
    }
}

fn http_client() -> reqwest::Client {
    // rustls needs one process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("lamina/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client settings are static and valid")
}

/// The token scope for a repository.
pub fn scope(repo: &str, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{repo}:pull"),
        Access::Push => format!("repository:{repo}:pull,push"),
    }
}

/// Whether `host` (maybe with port) is reached over plain HTTP: loopback, as Docker does, or
/// named as insecure (with or without its port).
pub fn uses_plain_http(host: &str, insecure: &[String]) -> bool {
    let bare = host_without_port(host);
    is_loopback(bare) || insecure.iter().any(|i| i == host || i == bare)
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn join_url(base: &Url, rel: &str) -> Result<Url> {
    base.join(rel).map_err(|e| RegistryError::Url {
        url: format!("{base} + {rel}"),
        reason: e.to_string(),
    })
}

fn range_header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).expect("a range made of digits is a valid header")
}

fn header_text(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
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

fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(BACKOFF_MAX)
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = header_text(resp, "retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(BACKOFF_MAX))
}

/// Pass a response whose status is one of `ok`; turn any other into an error with its body.
async fn expect(resp: Response, ok: &[StatusCode], method: &str, url: &Url) -> Result<Response> {
    if ok.contains(&resp.status()) {
        Ok(resp)
    } else {
        Err(status_error(resp, method, url).await)
    }
}

async fn status_error(resp: Response, method: &str, url: &Url) -> RegistryError {
    let status = resp.status().as_u16();
    RegistryError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        body: error_body(resp).await,
    }
}

async fn error_body(resp: Response) -> String {
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
async fn read_limited(resp: Response, limit_bytes: u64, url: &Url, what: &'static str) -> Result<Bytes> {
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

/// A digest and length computed over a streamed blob, checked at its end.
pub struct BlobCheck {
    hasher: Hasher,
    len_bytes: u64,
}

impl BlobCheck {
    /// Nothing seen yet.
    pub fn new() -> Self {
        BlobCheck {
            hasher: Hasher::new(),
            len_bytes: 0,
        }
    }

    /// More bytes of the blob.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len_bytes += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Check length and digest against the descriptor's.
    pub fn verify(self, what: &str, expected: &Digest, expected_len: u64) -> Result<()> {
        if self.len_bytes != expected_len {
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: expected_len,
                actual: self.len_bytes,
            });
        }
        let actual = self.hasher.finish();
        if &actual != expected {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl Default for BlobCheck {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_rules() {
        let insecure = vec!["reg.lan:5000".to_string(), "other.lan".to_string()];
        let cases = [
            ("localhost", true),
            ("localhost:5000", true),
            ("127.0.0.1:41000", true),
            ("127.1.2.3", true),
            ("[::1]:5000", true),
            ("reg.lan:5000", true),
            ("reg.lan:6000", false),
            ("other.lan:443", true),
            ("registry-1.docker.io", false),
            ("10.0.0.1:5000", false),
        ];
        for (host, want) in cases {
            assert_eq!(uses_plain_http(host, &insecure), want, "{host}");
        }
    }

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

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
