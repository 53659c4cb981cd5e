//! Mirrors in containerd's `hosts.toml` format, one directory per registry host:
//!
//! ```text
//! DIR/HOST[:PORT]/hosts.toml   (else DIR/_default/hosts.toml)
//!   server = "https://registry.example"      the upstream (default: the registry itself)
//!   [host."http://mirror.lan:5000"]          mirrors, tried in file order, upstream last
//!     capabilities = ["pull", "resolve"]     resolve: may answer tag look-ups
//!     skip_verify = false | ca = "ca.pem" | client = "c.pem" or [["c.pem", "k.pem"]]
//!     override_path = false                  true: the URL's path is the API root (no /v2)
//!     [host."http://mirror.lan:5000".header]  extra request headers
//! DIR = $LAMINA_HOSTS_DIRS (colon-separated) else /etc/lamina/hosts.d
//! ```
//!
//! A mirror gets no registry credentials and is asked with `?ns=<registry>`, as containerd
//! does. What it serves is checked by digest like everything else, so a mirror is never
//! trusted with content. Unknown keys are warnings; bad values are errors naming the file and
//! the line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::error::{RegistryError, Result};

/// Environment variable listing the hosts directories to search instead of the default.
pub const HOSTS_DIRS_ENV: &str = "LAMINA_HOSTS_DIRS";
/// How long a mirror that failed is left out.
pub const DOWN_FOR: Duration = Duration::from_secs(30);
/// Largest hosts.toml read.
const MAX_FILE: u64 = 1024 * 1024;

/// One mirror.
pub struct Mirror {
    /// Its API root (`…/v2/`, or the URL itself with `override_path`).
    pub root: Url,
    /// Whether it may answer tag look-ups.
    pub resolve: bool,
    /// Extra request headers.
    pub headers: HeaderMap,
    /// Its HTTP client (its own TLS settings).
    pub client: reqwest::Client,
    down_until: parking_lot::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mirror({})", self.root)
    }
}

impl Mirror {
    /// Whether it is left out now.
    pub fn is_down(&self) -> bool {
        self.down_until.lock().is_some_and(|t| Instant::now() < t)
    }

    /// Leave it out for [`DOWN_FOR`].
    pub fn mark_down(&self, why: &str) {
        tracing::warn!(mirror = %self.root, reason = why, "mirror skipped for {DOWN_FOR:?}");
        *self.down_until.lock() = Some(Instant::now() + DOWN_FOR);
    }

    /// The host:port it is, for stats and logs.
    pub fn host(&self) -> String {
        match self.root.port() {
            Some(p) => format!("{}:{p}", self.root.host_str().unwrap_or("")),
            None => self.root.host_str().unwrap_or("").to_string(),
        }
    }
}

/// What hosts.toml says of a registry: its mirrors, and the upstream if it is moved.
#[derive(Debug, Default)]
pub struct Hosts {
    /// The file read.
    pub file: Option<PathBuf>,
    /// Mirrors, in order.
    pub mirrors: Vec<Mirror>,
    /// `server`: where the registry itself is, if not at its name.
    pub server: Option<Url>,
}

fn search_dirs() -> Vec<PathBuf> {
    match std::env::var_os(HOSTS_DIRS_ENV) {
        Some(list) => std::env::split_paths(&list).collect(),
        None => vec![PathBuf::from("/etc/lamina/hosts.d")],
    }
}

/// The hosts.toml of `host` (first directory with one wins), parsed.
pub fn load(host: &str) -> Result<Hosts> {
    if host.is_empty() || host.contains('/') || host.contains("..") {
        return Ok(Hosts::default());
    }
    for dir in search_dirs() {
        for name in [host, "_default"] {
            let file = dir.join(name).join("hosts.toml");
            if file.is_file() {
                return parse_file(&file);
            }
        }
    }
    Ok(Hosts::default())
}

fn err(file: &Path, text: &str, key: &str, reason: impl Into<String>) -> RegistryError {
    let line = text.lines().position(|l| l.contains(key)).map_or(0, |n| n + 1);
    RegistryError::HostsFile {
        path: file.display().to_string(),
        line,
        reason: reason.into(),
    }
}

/// Read and check one hosts.toml.
pub fn parse_file(file: &Path) -> Result<Hosts> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .map_err(|e| err(file, "", "\u{0}", e.to_string()))?;
    parse(&text, file)
}

/// Parse hosts.toml text (`file` names it in errors; relative paths are relative to it).
pub fn parse(text: &str, file: &Path) -> Result<Hosts> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| text[..s.start.min(text.len())].lines().count().max(1));
        RegistryError::HostsFile {
            path: file.display().to_string(),
            line,
            reason: e.message().to_string(),
        }
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut hosts = Hosts {
        file: Some(file.to_path_buf()),
        ..Hosts::default()
    };
    for (key, value) in &table {
        match key.as_str() {
            "server" => {
                let s = value
                    .as_str()
                    .ok_or_else(|| err(file, text, "server", "server must be a string"))?;
                hosts.server = Some(host_url(s).map_err(|r| err(file, text, "server", r))?);
            }
            "host" => {
                let t = value
                    .as_table()
                    .ok_or_else(|| err(file, text, "[host", "host must be a table of tables"))?;
                // File order: toml keeps it (the preserve_order feature); fall back to the
                // order of appearance in the text.
                let mut entries: Vec<(&String, &toml::Value)> = t.iter().collect();
                entries.sort_by_key(|(k, _)| text.find(k.as_str()).unwrap_or(usize::MAX));
                for (url, h) in entries {
                    hosts.mirrors.push(mirror(url, h, dir, file, text)?);
                }
            }
            // Settings containerd has that apply to every host; lamina has them per host.
            "capabilities" | "skip_verify" | "ca" | "client" | "header" | "override_path" | "dial_timeout" => {
                tracing::warn!(file = %file.display(), key, "top-level key ignored (lamina reads it per [host])");
            }
            other => tracing::warn!(file = %file.display(), key = other, "unknown key in hosts.toml ignored"),
        }
    }
    Ok(hosts)
}

fn host_url(s: &str) -> std::result::Result<Url, String> {
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let u = Url::parse(&with_scheme).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("{s:?} is not an http(s) URL"));
    }
    Ok(u)
}

fn strings(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

fn mirror(url: &str, v: &toml::Value, dir: &Path, file: &Path, text: &str) -> Result<Mirror> {
    let fail = |key: &str, reason: String| err(file, text, key, reason);
    let t = v
        .as_table()
        .ok_or_else(|| fail(url, format!("[host.{url:?}] must be a table")))?;
    let mut root = host_url(url).map_err(|r| fail(url, r))?;
    let mut resolve = true;
    let mut override_path = false;
    let mut headers = HeaderMap::new();
    let mut tls = super::certs::TlsFiles::default();
    let mut skip_verify = false;
    for (key, value) in t {
        match key.as_str() {
            "capabilities" => {
                let caps = strings(value)
                    .ok_or_else(|| fail("capabilities", "capabilities must be a list of strings".into()))?;
                for c in &caps {
                    if !matches!(c.as_str(), "pull" | "resolve" | "push") {
                        return Err(fail("capabilities", format!("unknown capability {c:?}")));
                    }
                }
                if !caps.iter().any(|c| c == "pull") {
                    return Err(fail(
                        "capabilities",
                        format!("mirror {url} cannot pull: lamina only pulls"),
                    ));
                }
                resolve = caps.iter().any(|c| c == "resolve");
            }
            "skip_verify" => {
                skip_verify = value
                    .as_bool()
                    .ok_or_else(|| fail("skip_verify", "skip_verify must be true or false".into()))?
            }
            "override_path" => {
                override_path = value
                    .as_bool()
                    .ok_or_else(|| fail("override_path", "override_path must be true or false".into()))?
            }
            "ca" => {
                for p in strings(value).ok_or_else(|| fail("ca", "ca must be a path or a list of paths".into()))? {
                    tls.cas.extend(super::certs::read_cas(&dir.join(&p))?);
                }
            }
            "client" => {
                let pairs: Vec<(String, Option<String>)> = match value {
                    toml::Value::String(s) => vec![(s.clone(), None)],
                    toml::Value::Array(a) => a
                        .iter()
                        .map(|x| match x {
                            toml::Value::String(s) => Some((s.clone(), None)),
                            toml::Value::Array(p) if p.len() == 2 => {
                                Some((p[0].as_str()?.to_string(), Some(p[1].as_str()?.to_string())))
                            }
                            _ => None,
                        })
                        .collect::<Option<_>>()
                        .ok_or_else(|| fail("client", "client must be a path, or [cert, key] pairs".into()))?,
                    _ => return Err(fail("client", "client must be a path, or [cert, key] pairs".into())),
                };
                if let Some((cert, key)) = pairs.first() {
                    let mut pem = std::fs::read(dir.join(cert)).map_err(|e| fail("client", format!("{cert}: {e}")))?;
                    if let Some(k) = key {
                        pem.push(b'\n');
                        pem.extend(std::fs::read(dir.join(k)).map_err(|e| fail("client", format!("{k}: {e}")))?);
                    }
                    tls.identity =
                        Some(reqwest::Identity::from_pem(&pem).map_err(|e| fail("client", format!("{cert}: {e}")))?);
                }
            }
            "header" => {
                let h = value
                    .as_table()
                    .ok_or_else(|| fail("header", "header must be a table".into()))?;
                for (name, vals) in h {
                    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| fail(name, e.to_string()))?;
                    for v in
                        strings(vals).ok_or_else(|| fail(name, "a header value must be a string or a list".into()))?
                    {
                        headers.append(
                            n.clone(),
                            HeaderValue::from_str(&v).map_err(|e| fail(name, e.to_string()))?,
                        );
                    }
                }
            }
            "dial_timeout" => {}
            other => tracing::warn!(file = %file.display(), key = other, "unknown key in hosts.toml ignored"),
        }
    }
    if !override_path && !root.path().trim_end_matches('/').ends_with("/v2") {
        let path = format!("{}/v2/", root.path().trim_end_matches('/'));
        root.set_path(&path);
    } else if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    let client = super::transport::build_http_client_with(&tls, skip_verify).map_err(|r| fail(url, r))?;
    Ok(Mirror {
        root,
        resolve,
        headers,
        client,
        down_until: parking_lot::Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_in_file_order_with_their_settings() {
        let text = r#"
server = "https://upstream.example"
[host."http://b.lan:5000"]
  capabilities = ["pull"]
[host."http://a.lan:5000/prefix"]
  capabilities = ["pull", "resolve"]
  override_path = true
  [host."http://a.lan:5000/prefix".header]
    X-Test = ["1", "2"]
"#;
        let h = parse(text, Path::new("/x/hosts.toml")).unwrap();
        assert_eq!(h.server.unwrap().as_str(), "https://upstream.example/");
        let roots: Vec<&str> = h.mirrors.iter().map(|m| m.root.as_str()).collect();
        assert_eq!(roots, ["http://b.lan:5000/v2/", "http://a.lan:5000/prefix/"]);
        assert!(!h.mirrors[0].resolve && h.mirrors[1].resolve);
        assert_eq!(h.mirrors[1].headers.get_all("x-test").iter().count(), 2);
    }

    #[test]
    fn bad_values_name_the_file_and_line() {
        let text = "[host.\"http://m\"]\n  capabilities = [\"fly\"]\n";
        let e = parse(text, Path::new("/etc/lamina/hosts.d/r/hosts.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hosts.toml") && e.contains("line 2") && e.contains("fly"),
            "{e}"
        );
        let e = parse("server = [", Path::new("/h/hosts.toml")).unwrap_err().to_string();
        assert!(e.contains("/h/hosts.toml"), "{e}");
        // Unknown keys are only warnings.
        assert!(parse("colour = \"blue\"\n", Path::new("/h/hosts.toml")).is_ok());
    }
}
