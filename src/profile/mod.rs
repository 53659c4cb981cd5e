//! Access profiles: which files (and which chunks of them) a workload read, in the order it
//! first read them, recorded by every mount and kept in the cache per image manifest; shared
//! through the registry as an OCI artifact whose `subject` is the image ([`share`]); used by
//! the next mount to fetch those chunks before they are asked for ([`apply`]).
//!
//! ```text
//! mount ── view records first accesses ──► Profile ──merge──► CACHE/profiles/<manifest hex>.json
//! lamina profile push ──► registry: blob + artifact manifest (subject = image), referrers or
//!                         the sha256-<hex> tag index
//! mount --prefetch auto ──► profile from the cache, else the registry ──► prefetch in order
//! ```
//!
//! A profile is untrusted input: size-capped, parsed without panics, and every name or chunk
//! range it gives is checked against the layer indexes before use (unknown ones are skipped).

pub mod apply;
pub mod share;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Media type (and artifact type) of a profile.
pub const PROFILE_MEDIA_TYPE: &str = "application/vnd.lamina.profile.v1+json";
/// Largest profile accepted, from the cache or a registry.
pub const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// Most files a profile may list.
pub const MAX_PROFILE_FILES: usize = 200_000;

/// One file a workload read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAccess {
    /// The layer blob holding the file.
    pub layer: String,
    /// The file's path in that layer.
    pub path: String,
    /// Milliseconds from the mount to the first access.
    pub t_ms: u64,
    /// Chunk index ranges read (inclusive, in the file's chunk list); `None`: the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<(u32, u32)>>,
}

/// What the workloads on an image read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`PROFILE_MEDIA_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The image manifest's digest.
    pub image: String,
    /// Mounts merged into it.
    pub runs: u32,
    /// Files in first-access order.
    pub files: Vec<FileAccess>,
}

/// Why a profile was not used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Too large, not JSON, wrong type or too many files.
    #[error("profile {what}: {reason}")]
    Malformed {
        /// Where it came from.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Local I/O.
    #[error("profile {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl Profile {
    /// An empty profile of image `image`.
    pub fn new(image: &Digest) -> Profile {
        Profile {
            media_type: PROFILE_MEDIA_TYPE.into(),
            image: image.to_string(),
            runs: 0,
            files: Vec::new(),
        }
    }

    /// Parse untrusted bytes (`what` names them in errors).
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Profile, ProfileError> {
        let bad = |reason: String| ProfileError::Malformed {
            what: what.into(),
            reason,
        };
        if bytes.len() as u64 > MAX_PROFILE_BYTES {
            return Err(bad(format!(
                "{} bytes, over the {MAX_PROFILE_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let p: Profile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if p.media_type != PROFILE_MEDIA_TYPE {
            return Err(bad(format!("media type {:?}", p.media_type)));
        }
        if p.files.len() > MAX_PROFILE_FILES {
            return Err(bad(format!(
                "{} files, over the limit of {MAX_PROFILE_FILES}",
                p.files.len()
            )));
        }
        Ok(p)
    }

    /// Bytes to store or push.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a profile always serializes")
    }

    /// Merge `other` (another run) in: files keep their earliest first access, chunk ranges
    /// add up, and the order is by first access.
    pub fn merge(&mut self, other: &Profile) {
        let mut at: HashMap<(String, String), usize> = HashMap::new();
        for (i, f) in self.files.iter().enumerate() {
            at.insert((f.layer.clone(), f.path.clone()), i);
        }
        for f in &other.files {
            match at.get(&(f.layer.clone(), f.path.clone())) {
                Some(&i) => {
                    let mine = &mut self.files[i];
                    mine.t_ms = mine.t_ms.min(f.t_ms);
                    mine.chunks = match (mine.chunks.take(), &f.chunks) {
                        (Some(mut a), Some(b)) => {
                            a.extend(b.iter().copied());
                            Some(normalize_ranges(a))
                        }
                        _ => None,
                    };
                }
                None => {
                    at.insert((f.layer.clone(), f.path.clone()), self.files.len());
                    self.files.push(f.clone());
                }
            }
        }
        self.runs = self.runs.saturating_add(other.runs);
        self.files.sort_by_key(|f| f.t_ms);
        self.files.truncate(MAX_PROFILE_FILES);
    }
}

/// Sorted, merged, inclusive ranges.
pub fn normalize_ranges(mut r: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    r.retain(|(a, b)| a <= b);
    r.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `CACHE/profiles/<manifest hex>.json`.
pub fn path_in(cache_dir: &Path, image: &Digest) -> PathBuf {
    cache_dir.join("profiles").join(format!("{}.json", image.hex()))
}

/// The cached profile of `image`, if there is a usable one (a malformed one is reported and
/// skipped, never fatal).
pub fn load(cache_dir: &Path, image: &Digest) -> Option<Profile> {
    let path = path_in(cache_dir, image);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the cached profile; ignoring it");
            return None;
        }
    };
    match Profile::parse(&path.display().to_string(), &bytes) {
        Ok(p) if p.image == image.to_string() => Some(p),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "cached profile is for another image; ignoring it");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed profile");
            None
        }
    }
}

/// Store `profile` as the cached profile of its image (written to a temporary name, renamed).
pub fn save(cache_dir: &Path, profile: &Profile) -> Result<(), ProfileError> {
    let image: Digest = profile
        .image
        .parse()
        .map_err(|e: crate::digest::DigestError| ProfileError::Malformed {
            what: "being saved".into(),
            reason: e.to_string(),
        })?;
    let path = path_in(cache_dir, &image);
    let io = |source| ProfileError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, profile.to_bytes()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Remove the cached profile of `image`; whether there was one.
pub fn remove(cache_dir: &Path, image: &Digest) -> Result<bool, ProfileError> {
    let path = path_in(cache_dir, image);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ProfileError::Io { path, source }),
    }
}

/// Every usable cached profile, by image digest.
pub fn list(cache_dir: &Path) -> Vec<Profile> {
    let Ok(entries) = std::fs::read_dir(cache_dir.join("profiles")) else {
        return Vec::new();
    };
    let mut out: Vec<Profile> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".json")?;
            let d: Digest = format!("sha256:{hex}").parse().ok()?;
            load(cache_dir, &d)
        })
        .collect();
    out.sort_by(|a, b| a.image.cmp(&b.image));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, t_ms: u64, chunks: Option<Vec<(u32, u32)>>) -> FileAccess {
        FileAccess {
            layer: "sha256:aa".into(),
            path: path.into(),
            t_ms,
            chunks,
        }
    }

    #[test]
    fn runs_merge_by_first_access_and_chunk_ranges_add_up() {
        let d = Digest::of(b"image");
        let mut a = Profile::new(&d);
        a.runs = 1;
        a.files = vec![file("bin/a", 5, Some(vec![(0, 1)])), file("lib/b", 9, None)];
        let mut b = Profile::new(&d);
        b.runs = 1;
        b.files = vec![file("etc/c", 1, None), file("bin/a", 7, Some(vec![(2, 4), (9, 9)]))];
        a.merge(&b);
        assert_eq!(a.runs, 2);
        let order: Vec<&str> = a.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(order, ["etc/c", "bin/a", "lib/b"]);
        assert_eq!(a.files[1].chunks, Some(vec![(0, 4), (9, 9)]));
        assert_eq!(a.files[1].t_ms, 5);
    }

    #[test]
    fn malformed_profiles_are_refused_without_panic() {
        let d = Digest::of(b"image");
        let good = Profile::new(&d).to_bytes();
        assert!(Profile::parse("x", &good).is_ok());
        let cases: [&[u8]; 5] = [
            b"",
            b"{",
            br#"{"mediaType":"application/json","image":"x","runs":1,"files":[]}"#,
            br#"{"mediaType":"application/vnd.lamina.profile.v1+json","image":"x","runs":1,"files":[{"layer":1}]}"#,
            &[0xff; 64],
        ];
        for bytes in cases {
            assert!(
                Profile::parse("x", bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = vec![b' '; MAX_PROFILE_BYTES as usize + 1];
        assert!(Profile::parse("x", &huge).is_err());
    }

    #[test]
    fn ranges_normalize() {
        assert_eq!(
            normalize_ranges(vec![(5, 6), (0, 1), (2, 3), (9, 8), (7, 7), (4, 4)]),
            vec![(0, 7)]
        );
        assert_eq!(normalize_ranges(vec![(0, 0), (2, 2)]), vec![(0, 0), (2, 2)]);
    }
}
