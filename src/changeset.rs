//! The OCI layer changeset rules that every consumer of a layer shares (the full-pull applier
//! today, the union index of a lazy mount and `commit` later): how an entry's path is
//! normalized, and which names are whiteouts.
//!
//! Path rules (see ARCHITECTURE.md, "Nothing escapes the root"):
//! - leading `/` and `./`, `.` and empty components are dropped: `/etc//x` and `./etc/x` are
//!   `etc/x`; the empty path is the root itself;
//! - a `..` component is refused: no layer made by a real tool needs one;
//! - a component longer than 255 bytes, or a path longer than 4096, is refused.
//!
//! Whiteout rules (image-spec layer.md): `DIR/.wh..wh..opq` makes DIR opaque; `DIR/.wh.NAME`
//! deletes `DIR/NAME` from lower layers; other `.wh..wh.*` names are AUFS metadata and skipped;
//! a bare `.wh.` (or `.wh..`, `.wh...`) is refused.

/// Longest path accepted (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name accepted (Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Prefix of whiteout names.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS metadata names.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Why an entry's path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// A `..` component.
    #[error("entry {0:?}: path has a '..' component")]
    DotDot(String),
    /// A NUL byte.
    #[error("entry {0:?}: path has a NUL byte")]
    Nul(String),
    /// Over the length limits.
    #[error("entry {0:?}: path or name too long")]
    TooLong(String),
    /// A whiteout with no target.
    #[error("entry {0:?}: whiteout names nothing")]
    EmptyWhiteout(String),
}

/// A normalized entry path: components joined by `/`, no leading `/`, empty for the root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerPath(Vec<u8>);

impl LayerPath {
    /// The root directory.
    pub fn root() -> LayerPath {
        LayerPath(Vec::new())
    }

    /// Normalize a raw path from a layer.
    pub fn normalize(raw: &[u8]) -> Result<LayerPath, PathError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(shown()));
        }
        let mut out = Vec::with_capacity(raw.len());
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => continue,
                b".." => return Err(PathError::DotDot(shown())),
                c if c.len() > MAX_NAME_BYTES => return Err(PathError::TooLong(shown())),
                c => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(c);
                }
            }
        }
        Ok(LayerPath(out))
    }

    /// The path's bytes (`a/b/c`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The components, top first.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    /// The parent path and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(LayerPath, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => (LayerPath(self.0[..i].to_vec()), &self.0[i + 1..]),
            None => (LayerPath::root(), &self.0[..]),
        })
    }

    /// `self/name`.
    pub fn join(&self, name: &[u8]) -> LayerPath {
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        LayerPath(v)
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &LayerPath) -> bool {
        other.0.is_empty()
            || (self.0.starts_with(&other.0) && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }
}

impl std::fmt::Display for LayerPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", String::from_utf8_lossy(&self.0))
    }
}

/// What an entry's name means in a changeset.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker {
    /// An ordinary entry.
    Plain,
    /// `.wh.NAME`: delete `target` from lower layers.
    Whiteout {
        /// The path it deletes.
        target: LayerPath,
    },
    /// `.wh..wh..opq`: hide every lower child of `dir`.
    Opaque {
        /// The directory made opaque.
        dir: LayerPath,
    },
    /// AUFS metadata (`.wh..wh.plnk` and the like): skipped.
    AufsMeta,
}

/// What one layer has done so far, for the lower-only rules every consumer applies in stream
/// order: a whiteout or opaque marker hides what the layers below made, never what this layer
/// made (or makes later), wherever the marker stands in the tar.
#[derive(Debug, Default)]
pub struct LayerRules {
    /// Paths this layer created or described (implicit parent directories included).
    pub touched: std::collections::HashSet<LayerPath>,
    /// Directories this layer made opaque.
    pub opaque: std::collections::HashSet<LayerPath>,
    /// Paths this layer whited out.
    pub whited_out: std::collections::HashSet<LayerPath>,
}

impl LayerRules {
    /// Whether `path`, if it exists, belongs to a lower layer this layer has hidden.
    pub fn hides_lower(&self, path: &LayerPath) -> bool {
        if self.touched.contains(path) || (self.opaque.is_empty() && self.whited_out.is_empty()) {
            return false;
        }
        self.whited_out.contains(path)
            || path
                .split_last()
                .is_some_and(|(parent, _)| self.opaque.contains(&parent))
    }

    /// Whether this layer created or described `path`.
    pub fn made(&self, path: &LayerPath) -> bool {
        self.touched.contains(path)
    }
}

/// Classify a normalized path.
pub fn classify(path: &LayerPath) -> Result<Marker, PathError> {
    let Some((parent, name)) = path.split_last() else {
        return Ok(Marker::Plain);
    };
    if name == OPAQUE_MARKER {
        return Ok(Marker::Opaque { dir: parent });
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Ok(Marker::AufsMeta);
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        None => Ok(Marker::Plain),
        Some(b"" | b"." | b"..") => Err(PathError::EmptyWhiteout(path.to_string())),
        Some(target) => Ok(Marker::Whiteout {
            target: parent.join(target),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cases() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"a/b", b"a/b"),
            (b"/a/b", b"a/b"),
            (b"./a/b/", b"a/b"),
            (b"a//./b", b"a/b"),
            (b"./", b""),
            (b"/", b""),
            (b"", b""),
            (b"...", b"..."),
            (b"a/..b", b"a/..b"),
        ];
        for (raw, want) in ok {
            assert_eq!(LayerPath::normalize(raw).unwrap().as_bytes(), *want, "{raw:?}");
        }
        let long_name = [b'x'; 256];
        let long_path = b"a/".repeat(2100);
        let bad: &[&[u8]] = &[b"..", b"../x", b"a/../../x", b"/..", b"a\0b", &long_name, &long_path];
        for raw in bad {
            assert!(LayerPath::normalize(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn classify_cases() {
        let p = |s: &str| LayerPath::normalize(s.as_bytes()).unwrap();
        assert_eq!(classify(&p("a/b")).unwrap(), Marker::Plain);
        assert_eq!(classify(&p("a/.wh.b")).unwrap(), Marker::Whiteout { target: p("a/b") });
        assert_eq!(classify(&p(".wh.b")).unwrap(), Marker::Whiteout { target: p("b") });
        assert_eq!(classify(&p("a/.wh..wh..opq")).unwrap(), Marker::Opaque { dir: p("a") });
        assert_eq!(classify(&p(".wh..wh..opq")).unwrap(), Marker::Opaque { dir: p("") });
        assert_eq!(classify(&p(".wh..wh.plnk")).unwrap(), Marker::AufsMeta);
        assert!(classify(&p("a/.wh.")).is_err());
        assert!(classify(&p("a/.wh..")).is_err());
        assert_eq!(classify(&p("a/x.wh.b")).unwrap(), Marker::Plain);
    }

    #[test]
    fn path_relations() {
        let p = |s: &str| LayerPath::normalize(s.as_bytes()).unwrap();
        assert!(p("a/b").starts_with(&p("a")));
        assert!(p("a").starts_with(&p("a")));
        assert!(!p("ab").starts_with(&p("a")));
        assert!(p("x").starts_with(&LayerPath::root()));
        let abc = p("a/b/c");
        let (parent, name) = abc.split_last().unwrap();
        assert_eq!((parent, name), (p("a/b"), &b"c"[..]));
    }
}
