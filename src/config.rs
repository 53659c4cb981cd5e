//! lamina's own configuration files: `/etc/lamina/config.json`, then
//! `$XDG_CONFIG_HOME/lamina/config.json` (or `~/.config/lamina/config.json`), each optional:
//! `{"insecure_registries": ["host:port", …]}`. Every command and daemon reads them the same way.

use std::path::PathBuf;

/// A config file exists but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("reading {}: {reason}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    insecure_registries: Vec<String>,
}

/// The config files, system first.
fn paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/etc/lamina/config.json")];
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        paths.push(PathBuf::from(x).join("lamina/config.json"));
    } else if let Some(h) = std::env::var_os("HOME") {
        paths.push(PathBuf::from(h).join(".config/lamina/config.json"));
    }
    paths
}

/// Hosts listed as insecure (plain HTTP) in every config file found.
pub fn insecure_registries() -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for path in paths() {
        let err = |reason: String| ConfigError {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let c: ConfigFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
                out.extend(c.insecure_registries);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
    }
    Ok(out)
}
