//! Registry authentication: credentials from podman's auth file, the Docker config file and
//! credential helpers ([`super::credhelper`]), `WWW-Authenticate`
//! challenge parsing, and a cache of bearer tokens per scope.
//!
//! Invariants: secrets never reach a log or an error message (their `Debug` is `<redacted>`);
//! credentials are only ever sent to the registry host they were configured for, and to the
//! token realm that host's challenge named.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::error::{RegistryError, Result};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The user name docker uses for an identity token (an OAuth2 refresh token).
    pub const IDENTITY_TOKEN_USER: &'static str = "<token>";

    /// An identity token: exchanged at the token endpoint with the refresh-token grant.
    pub fn identity_token(token: String) -> Credentials {
        Credentials {
            username: Self::IDENTITY_TOKEN_USER.to_string(),
            password: token,
        }
    }

    /// Whether this is an identity token rather than a user name and password.
    pub fn is_identity_token(&self) -> bool {
        self.username == Self::IDENTITY_TOKEN_USER
    }

    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// Where the Docker config file is: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// podman's auth files, in the order containers/image reads them: `$REGISTRY_AUTH_FILE`, else
/// `$XDG_RUNTIME_DIR/containers/auth.json`; then `~/.config/containers/auth.json`.
pub fn podman_auth_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(f));
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(PathBuf::from(d).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        out.push(PathBuf::from(h).join(".config/containers/auth.json"));
    }
    out
}

/// Credentials for `registry`: podman's auth files, then the Docker config file; in each, a
/// credential helper named for the registry (`credHelpers`), the `auths` entry, then the
/// default helper (`credsStore`). Missing files are not errors; unreadable or malformed ones,
/// and helpers that fail, are (naming the file or the helper).
pub fn credentials_for(registry: &str) -> Result<Option<Credentials>> {
    let files = podman_auth_paths().into_iter().chain(docker_config_path());
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(config_error(&path, e.to_string())),
        };
        match lookup_in_config(&text, registry).map_err(|reason| config_error(&path, reason))? {
            Source::Found(c) => return Ok(Some(c)),
            Source::Helper(name) => {
                let found = super::credhelper::get(&name, registry)?;
                tracing::debug!(registry, helper = %name, file = %path.display(), found = found.is_some(), "credential helper asked");
                if found.is_some() {
                    return Ok(found);
                }
            }
            Source::None => {}
        }
    }
    Ok(None)
}

fn config_error(path: &std::path::Path, reason: String) -> RegistryError {
    RegistryError::DockerConfig {
        path: path.display().to_string(),
        reason,
    }
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Where a config file says a registry's credentials are.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// In the file.
    Found(Credentials),
    /// With this credential helper (`docker-credential-NAME`).
    Helper(String),
    /// Not in this file.
    None,
}

/// Look `registry` up in the text of a Docker config file. Keys may be bare hosts or URLs
/// (`https://index.docker.io/v1/` for Docker Hub).
pub fn credentials_from_config(text: &str, registry: &str) -> std::result::Result<Option<Credentials>, String> {
    Ok(match lookup_in_config(text, registry)? {
        Source::Found(c) => Some(c),
        _ => None,
    })
}

/// Where `registry`'s credentials are according to a Docker (or podman) config file's text.
pub fn lookup_in_config(text: &str, registry: &str) -> std::result::Result<Source, String> {
    let config: DockerConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let wanted = normalize_config_key(registry);
    if let Some((_, helper)) = config
        .cred_helpers
        .iter()
        .find(|(k, _)| normalize_config_key(k) == wanted)
    {
        return helper_source(helper);
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| normalize_config_key(k) == wanted)
        .map(|(_, v)| v)
    else {
        return match &config.creds_store {
            Some(h) if !h.is_empty() => helper_source(h),
            _ => Ok(Source::None),
        };
    };
    if let Some(t) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Source::Found(Credentials::identity_token(t.to_string())));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{registry}.auth is not base64: {e}"))?;
        let raw = String::from_utf8(raw).map_err(|_| format!("auths.{registry}.auth is not UTF-8"))?;
        let (username, password) = raw
            .split_once(':')
            .ok_or_else(|| format!("auths.{registry}.auth is not user:password"))?;
        return Ok(Source::Found(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Source::Found(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(Source::None),
    }
}

/// A helper name as a program suffix: letters, digits, `-`, `_`, `.` only (it becomes part of
/// a program name looked up on PATH).
fn helper_source(name: &str) -> std::result::Result<Source, String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!("credential helper name {name:?} is not a plain name"));
    }
    Ok(Source::Helper(name.to_string()))
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/` → `host:5000`.
fn normalize_config_key(key: &str) -> String {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`
    Basic,
    /// `Bearer realm=…,service=…,scope=…`
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if given.
        service: Option<String>,
        /// `scope` parameter, if given.
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header value. Unknown schemes give `None`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let params = parse_params(params);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `a="x, y",b=z` → {a: "x, y", b: z}. Quoted values may contain commas and `\"`.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// A token endpoint's answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// Token lifetime assumed when the endpoint does not say (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so a request never carries a stale one.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// What a registry asked for, learned from its first 401, and the tokens it gave.
#[derive(Default)]
pub(crate) struct AuthState {
    pub challenge: Option<Challenge>,
    tokens: HashMap<String, (String, Instant)>,
}

impl AuthState {
    /// A cached, unexpired token for `scope`.
    pub fn token(&self, scope: &str) -> Option<String> {
        let (t, until) = self.tokens.get(scope)?;
        (Instant::now() < *until).then(|| t.clone())
    }

    /// Remember `token` for `scope`.
    pub fn store_token(&mut self, scope: &str, response: TokenResponse) -> Option<String> {
        let token = response.token.or(response.access_token)?;
        let life = response
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let until = Instant::now() + life.saturating_sub(TOKEN_EXPIRY_MARGIN).max(Duration::from_secs(1));
        self.tokens.insert(scope.to_string(), (token.clone(), until));
        Some(token)
    }

    /// Forget the token for `scope` (the registry refused it).
    pub fn drop_token(&mut self, scope: &str) {
        self.tokens.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let cases = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull""#,
                Some(Challenge::Bearer {
                    realm: "https://auth.docker.io/token".into(),
                    service: Some("registry.docker.io".into()),
                    scope: Some("repository:library/x:pull".into()),
                }),
            ),
            (
                r#"bearer realm="http://127.0.0.1:1/t", scope="repository:a:pull,push""#,
                Some(Challenge::Bearer {
                    realm: "http://127.0.0.1:1/t".into(),
                    service: None,
                    scope: Some("repository:a:pull,push".into()),
                }),
            ),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            ("Bearer service=x", None),
            ("Negotiate", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_challenge(input), want, "{input}");
        }
    }

    #[test]
    fn config_lookup() {
        // "user:pa:ss" base64
        let text = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "localhost:5000":{"username":"u","password":"p"},
            "bad.io":{"auth":"!!"}}}"#;
        let hub = credentials_from_config(text, "docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("user", "pa:ss"));
        let local = credentials_from_config(text, "localhost:5000").unwrap().unwrap();
        assert_eq!(local.username, "u");
        assert_eq!(credentials_from_config(text, "other.io").unwrap(), None);
        assert!(credentials_from_config(text, "bad.io").is_err());
        assert!(credentials_from_config("{", "x").is_err());
        assert!(!format!("{hub:?}").contains("pa:ss"));
    }
}
