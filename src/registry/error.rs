//! The registry client's one error type. Every variant carries what a person needs to act:
//! the URL, the HTTP status and the registry's own error body, or the digests that differ.

use crate::digest::Digest;

/// Longest registry error body kept in an error message.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 2048;

/// Something went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}{}", body_suffix(.body))]
    Status {
        /// HTTP method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The registry's error body (truncated).
        body: String,
    },
    /// The connection failed or timed out (after retries).
    #[error("{method} {url}: {}", transport_reason(.error))]
    Transport {
        /// HTTP method.
        method: String,
        /// Request URL.
        url: String,
        /// The underlying error (its causes are in the message, so it is not a `source`).
        error: reqwest::Error,
    },
    /// Authentication was refused or the challenge could not be answered.
    #[error("authentication to {registry} failed: {reason}")]
    Auth {
        /// Registry host.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// Downloaded bytes do not match the digest that names them.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was downloaded (blob, manifest, URL).
        what: String,
        /// The digest that names it.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// Fewer or more bytes than the descriptor said.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was downloaded.
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Size that arrived.
        actual: u64,
    },
    /// A response larger than lamina accepts for its kind.
    #[error("{url}: {what} larger than the {limit_bytes}-byte limit")]
    TooLarge {
        /// Request URL.
        url: String,
        /// What was being read.
        what: &'static str,
        /// The limit.
        limit_bytes: u64,
    },
    /// A `Range` request answered with a `Content-Range` that does not match.
    #[error("{url}: asked for bytes {start}-{end_inclusive}, got Content-Range {got:?}")]
    BadRange {
        /// Request URL.
        url: String,
        /// First byte asked for.
        start: u64,
        /// Last byte asked for.
        end_inclusive: u64,
        /// The header received.
        got: String,
    },
    /// A manifest or index lamina cannot use.
    #[error("manifest {reference}: {reason}")]
    BadManifest {
        /// What was resolved.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A media type lamina does not handle.
    #[error("{what}: unsupported media type {media_type:?}; supported: {supported}")]
    UnsupportedMediaType {
        /// Where it was found.
        what: String,
        /// The media type.
        media_type: String,
        /// The supported ones, comma-separated.
        supported: String,
    },
    /// An index with no manifest for the wanted platform.
    #[error("{reference}: no manifest for platform {wanted}; available: {available}")]
    NoPlatform {
        /// What was resolved.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms in the index.
        available: String,
    },
    /// Too many redirects, or a redirect without a usable Location.
    #[error("{url}: {reason}")]
    Redirect {
        /// Request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A bad URL built from a registry name or a Location header.
    #[error("bad URL {url:?}: {reason}")]
    Url {
        /// The URL text.
        url: String,
        /// Parser message.
        reason: String,
    },
    /// A local file the client writes to (a download's spool) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// `--pull never` and the cache lacks what is needed.
    #[error("{reference}: {what} is not in the cache, and --pull never forbids asking the registry")]
    NotCached {
        /// What was resolved.
        reference: String,
        /// What is missing.
        what: String,
    },
    /// The Docker config file could not be read.
    #[error("docker config {path}: {reason}")]
    DockerConfig {
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A registry's TLS file (certs.d) cannot be used.
    #[error("TLS file {path}: {reason}")]
    Tls {
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A hosts.toml cannot be used.
    #[error("{path}: line {line}: {reason}")]
    HostsFile {
        /// File path.
        path: String,
        /// The line (0 when unknown).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A credential helper failed.
    #[error("credential helper {helper}: {reason}")]
    CredentialHelper {
        /// The program.
        helper: String,
        /// What went wrong.
        reason: String,
    },
}

/// The causes under a reqwest error, without reqwest's own "error sending request for url"
/// line, which only repeats the URL.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut causes = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(c) = next {
        let text = c.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        next = c.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

fn body_suffix(body: &str) -> String {
    if body.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", body.trim())
    }
}

impl RegistryError {
    /// Whether trying again later might succeed (connection trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the registry refuses for good what was asked: it is not there (404, 410) or
    /// may not be had (401 after authenticating, 403), or authentication cannot be done.
    pub fn is_refusal(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => matches!(status, 401 | 403 | 404 | 410),
            RegistryError::Auth { .. } => true,
            _ => false,
        }
    }
}

/// Shorthand for results of registry calls.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
