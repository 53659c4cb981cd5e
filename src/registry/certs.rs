//! Per-registry TLS files where docker and podman keep them (containers-certs.d(5)):
//!
//! ```text
//! DIR/HOST[:PORT]/*.crt            CA certificates, added to the system's roots
//! DIR/HOST[:PORT]/NAME.cert        a client certificate, with its key NAME.key
//! DIR = $LAMINA_CERTS_DIRS (a colon-separated list), else
//!       /etc/lamina/certs.d, /etc/containers/certs.d, /etc/docker/certs.d — the first with a
//!       directory for the host is used, as podman does
//! ```
//!
//! A registry with such a directory is reached over HTTPS even on loopback (where plain HTTP
//! is the default). A file that does not parse is an error naming it, never skipped.

use std::path::{Path, PathBuf};

use super::error::{RegistryError, Result};

/// Environment variable listing the certificate directories to search instead of the defaults.
pub const CERTS_DIRS_ENV: &str = "LAMINA_CERTS_DIRS";

/// Largest certificate or key file read.
const MAX_FILE: u64 = 1024 * 1024;

/// What a registry's certificate directory holds.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The directory, if there is one.
    pub dir: Option<PathBuf>,
    /// CA certificates.
    pub cas: Vec<reqwest::Certificate>,
    /// The client certificate and key.
    pub identity: Option<reqwest::Identity>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("dir", &self.dir)
            .field("cas", &self.cas.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    match std::env::var_os(CERTS_DIRS_ENV) {
        Some(list) => std::env::split_paths(&list).collect(),
        None => ["/etc/lamina/certs.d", "/etc/containers/certs.d", "/etc/docker/certs.d"]
            .iter()
            .map(PathBuf::from)
            .collect(),
    }
}

/// The TLS files for `host` (`name:port` as in the image reference).
pub fn load(host: &str) -> Result<TlsFiles> {
    // A host name never holds a path separator or `..`: refuse rather than look elsewhere.
    if host.is_empty() || host.contains('/') || host.contains("..") {
        return Ok(TlsFiles::default());
    }
    let Some(dir) = search_dirs().into_iter().map(|d| d.join(host)).find(|d| d.is_dir()) else {
        return Ok(TlsFiles::default());
    };
    load_dir(&dir)
}

fn err(path: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::Tls {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
    let mut out = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut out)
        .map_err(|e| err(path, e.to_string()))?;
    if out.len() as u64 > MAX_FILE {
        return Err(err(path, "over 1 MiB"));
    }
    Ok(out)
}

/// Read one host's directory.
pub fn load_dir(dir: &Path) -> Result<TlsFiles> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut files = TlsFiles {
        dir: Some(dir.to_path_buf()),
        ..TlsFiles::default()
    };
    for path in &names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => files.cas.extend(read_cas(path)?),
            Some("cert") => {
                let key = path.with_extension("key");
                if !key.is_file() {
                    return Err(err(
                        path,
                        format!("client certificate without its key {}", key.display()),
                    ));
                }
                if files.identity.is_some() {
                    return Err(err(path, "a second client certificate (one per registry)"));
                }
                let mut pem = read(path)?;
                if !contains_pem(&pem, "CERTIFICATE") {
                    return Err(err(path, "no PEM certificate in the file"));
                }
                pem.push(b'\n');
                let key_pem = read(&key)?;
                if !contains_pem(&key_pem, "PRIVATE KEY") {
                    return Err(err(&key, "no PEM private key in the file"));
                }
                pem.extend_from_slice(&key_pem);
                files.identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| err(path, e.to_string()))?);
            }
            Some("key") if !path.with_extension("cert").is_file() => {
                return Err(err(path, "a key without its client certificate (NAME.cert)"));
            }
            _ => {}
        }
    }
    Ok(files)
}

/// The CA certificates of a PEM file (an error naming it if it holds none).
pub fn read_cas(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = read(path)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(path, e.to_string()))?;
    if certs.is_empty() || !contains_pem(&pem, "CERTIFICATE") {
        return Err(err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Whether `pem` has a `-----BEGIN … LABEL-----` block (`LABEL` may be preceded by a kind).
fn contains_pem(pem: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_errors_naming_them() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.crt"), b"not a certificate").unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("ca.crt"), "{e}");
        std::fs::remove_file(d.path().join("ca.crt")).unwrap();
        std::fs::write(d.path().join("client.cert"), b"x").unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("without its key"), "{e}");
        std::fs::remove_file(d.path().join("client.cert")).unwrap();
        std::fs::write(d.path().join("client.key"), b"x").unwrap();
        assert!(load_dir(d.path())
            .unwrap_err()
            .to_string()
            .contains("without its client certificate"));
    }

    #[test]
    fn host_names_never_become_other_paths() {
        for h in ["", "../etc", "a/b"] {
            assert!(load(h).unwrap().dir.is_none());
        }
    }
}
