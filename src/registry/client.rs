//! One [`Registry`] per registry host: its settings, its identity, and the manifest API.
//! How requests travel is [`super::transport`] (retries, redirects, body limits), how they are
//! authorized [`super::token`], and blob reads and uploads [`super::blob`].
//!
//! Invariants: every manifest returned has been checked against its digest; credentials never
//! go to another origin (see `transport`).

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::{self, AuthState, Credentials};
use super::error::{RegistryError, Result};
use super::manifest::ACCEPTED_MANIFEST_TYPES;
use super::transport::{expect, header_text, http_client, join_url, read_limited};
use crate::digest::Digest;

/// How many times a request is tried before its error is returned.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

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
    pub(super) name: String,
    pub(super) base: Url,
    /// Built at the first request: loading the system's CA certificates costs tens of
    /// milliseconds that a warm mount, which sends no request, should not pay.
    http: std::sync::OnceLock<reqwest::Client>,
    pub(super) credentials: Option<Credentials>,
    pub(super) auth: Mutex<AuthState>,
    pub(super) max_attempts: u32,
    /// CA certificates and client certificate from the registry's certs.d directory.
    tls: super::certs::TlsFiles,
    /// Mirrors from hosts.toml, tried in order before the registry itself.
    pub(super) mirrors: Vec<super::hosts::Mirror>,
    /// Which mirror last served each blob (by digest), to distrust it if its bytes are wrong.
    pub(super) served_by: Mutex<std::collections::HashMap<String, usize>>,
    /// Requests answered per host (mirrors and the registry), for `lamina stats`.
    pub(super) host_requests: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Blob URLs the registry redirected to another origin (object storage, a CDN), with when
    /// they were learned: later Range requests of the same blob go there directly.
    pub(super) redirects: Mutex<std::collections::HashMap<String, (Url, std::time::Instant)>>,
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
        let mut tls = super::certs::load(name)?;
        if tls.dir.is_none() && name != api_host {
            tls = super::certs::load(api_host)?;
        }
        // A certs.d directory for the host asks for TLS, on loopback too.
        let scheme = if tls.dir.is_none()
            && (uses_plain_http(api_host, &options.insecure_registries)
                || uses_plain_http(name, &options.insecure_registries))
        {
            "http"
        } else {
            "https"
        };
        let hosts = super::hosts::load(name)?;
        if let Some(f) = &hosts.file {
            tracing::debug!(registry = name, file = %f.display(), mirrors = hosts.mirrors.len(), "hosts.toml read");
        }
        let text = match &hosts.server {
            Some(server) => server.as_str().to_string(),
            None => format!("{scheme}://{api_host}/"),
        };
        let base = Url::parse(&text).map_err(|e| RegistryError::Url {
            url: text.clone(),
            reason: e.to_string(),
        })?;
        // With TLS files, the client is made now, so that files rustls refuses (a v1
        // certificate, a key of another kind) are an error naming them, not a surprise later.
        let http = std::sync::OnceLock::new();
        if let Some(dir) = &tls.dir {
            if !tls.cas.is_empty() || tls.identity.is_some() {
                let client = super::transport::build_http_client(&tls).map_err(|reason| RegistryError::Tls {
                    path: dir.display().to_string(),
                    reason,
                })?;
                let _ = http.set(client);
            }
        }
        Ok(Registry {
            name: name.to_string(),
            base,
            http,
            credentials,
            auth: Mutex::new(AuthState::default()),
            max_attempts: options.max_attempts.max(1),
            tls,
            mirrors: hosts.mirrors,
            served_by: Mutex::new(Default::default()),
            host_requests: Mutex::new(Default::default()),
            redirects: Mutex::new(Default::default()),
        })
    }

    /// The HTTP client (made on first use).
    pub(super) fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| http_client(&self.tls))
    }

    /// The registry's name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of blob `digest` did not verify: the mirror that served them (if one did) is
    /// left out for a while, so the next try goes to the next host.
    pub fn distrust(&self, digest: &Digest) {
        if let Some(i) = self.served_by.lock().remove(&digest.to_string()) {
            if let Some(m) = self.mirrors.get(i) {
                m.mark_down(&format!("served bytes of {digest} that do not verify"));
            }
        }
    }

    /// Whether the registry is reached over HTTPS (TLS files for it, or not on loopback and
    /// not listed as insecure).
    pub fn is_https(&self) -> bool {
        self.base.scheme() == "https"
    }

    /// Requests answered so far by each host: mirrors by their host, the registry by its name.
    pub fn requests_by_host(&self) -> Vec<(String, u64)> {
        self.host_requests.lock().iter().map(|(h, n)| (h.clone(), *n)).collect()
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

    pub(super) fn url(&self, path: &str) -> Result<Url> {
        join_url(&self.base, path)
    }

    pub(super) fn blob_url(&self, repo: &str, digest: &Digest) -> Result<Url> {
        self.url(&format!("v2/{repo}/blobs/{digest}"))
    }
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

pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
}
