//! Image references, parsed by Docker's rules:
//! `[registry/][namespace/]name[:tag][@sha256:digest]`.
//!
//! ```text
//! ubuntu                    -> docker.io/library/ubuntu:latest
//! localhost:5000/x/y:1      -> registry localhost:5000, repository x/y, tag 1
//! r.example/a@sha256:…      -> pinned by digest (no implied tag)
//! ```
//!
//! Invariants: the registry is lower-case-insensitive text as given (`index.docker.io` folds to
//! `docker.io`); the repository path is lower case and made of valid components; when neither tag
//! nor digest is given the tag is `latest`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry implied when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The host that actually serves the Docker Hub API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Longest repository name (registry + path) Docker accepts.
const MAX_NAME_LEN: usize = 255;
/// Longest tag Docker accepts.
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/debian`).
    pub repository: String,
    /// Tag, if any (`latest` is filled in when there is no digest either).
    pub tag: Option<String>,
    /// Digest pin, if any.
    pub digest: Option<Digest>,
}

/// Why a reference was refused. Each variant carries the whole input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Empty input.
    #[error("invalid reference: empty")]
    Empty,
    /// Upper case in the repository path.
    #[error("invalid reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// A path component is not `[a-z0-9]+` joined by `.`, `_`, `__` or dashes.
    #[error("invalid reference {input:?}: bad repository component {component:?}")]
    Component {
        /// The whole input.
        input: String,
        /// The offending component.
        component: String,
    },
    /// A registry host that is not a host name or `[ipv6]` with an optional port.
    #[error("invalid reference {input:?}: bad registry host {host:?}")]
    Host {
        /// The whole input.
        input: String,
        /// The offending host.
        host: String,
    },
    /// A tag that is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid reference {input:?}: bad tag {tag:?}")]
    Tag {
        /// The whole input.
        input: String,
        /// The offending tag.
        tag: String,
    },
    /// A digest that is not `sha256:<64 hex>`.
    #[error("invalid reference {input:?}: {source}")]
    Digest {
        /// The whole input.
        input: String,
        /// What is wrong with the digest.
        source: crate::digest::DigestError,
    },
    /// Registry + path over 255 bytes.
    #[error("invalid reference {0:?}: repository name longer than 255 characters")]
    TooLong(String),
}

impl ImageRef {
    /// Parse `input` by Docker's rules.
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse().map_err(|source| ReferenceError::Digest {
                    input: input.to_string(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let (name, tag) = split_tag(rest);
        let (registry, path) = split_registry(name);
        if !valid_host(registry) {
            return Err(ReferenceError::Host {
                input: input.to_string(),
                host: registry.to_string(),
            });
        }
        validate_path(input, path)?;
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag {
                    input: input.to_string(),
                    tag: t.to_string(),
                });
            }
        }
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        // Checked on the normalized name, so that what prints always parses again
        // (found by fuzzing: a 250-byte short name grows past 255 with `docker.io/library/`).
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The host name (with port) that serves this registry's API.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `name[:tag]` → (name, tag); a `:` before the last `/` is a port, not a tag.
fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rfind(':') {
        Some(i) if !s[i..].contains('/') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    }
}

/// Docker's rule: the first component is a registry if it has a `.` or `:`, is `localhost`,
/// or has upper case; otherwise the registry is Docker Hub.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

fn validate_path(input: &str, path: &str) -> Result<(), ReferenceError> {
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase(input.to_string()));
    }
    for component in path.split('/') {
        if !valid_component(component) {
            return Err(ReferenceError::Component {
                input: input.to_string(),
                component: component.to_string(),
            });
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A host name of dot-separated labels, or `[ipv6]`, with an optional numeric port.
fn valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match tail.strip_prefix(':') {
                    Some(p) => ("", Some(p)),
                    None if tail.is_empty() => ("", None),
                    None => return false,
                }
            }
            None => return false,
        }
    } else {
        match h.split_once(':') {
            Some((host, p)) => (host, Some(p)),
            None => (h, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if h.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accepted() {
        // input, registry, repository, tag, digest?
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("ubuntu", "docker.io", "library/ubuntu", Some("latest"), false),
            ("ubuntu:22.04", "docker.io", "library/ubuntu", Some("22.04"), false),
            ("library/ubuntu", "docker.io", "library/ubuntu", Some("latest"), false),
            ("someone/app", "docker.io", "someone/app", Some("latest"), false),
            ("docker.io/debian", "docker.io", "library/debian", Some("latest"), false),
            (
                "index.docker.io/debian",
                "docker.io",
                "library/debian",
                Some("latest"),
                false,
            ),
            ("localhost/x", "localhost", "x", Some("latest"), false),
            ("localhost:5000/x", "localhost:5000", "x", Some("latest"), false),
            ("localhost:5000/a/b/c:v1", "localhost:5000", "a/b/c", Some("v1"), false),
            ("127.0.0.1:41234/img:t", "127.0.0.1:41234", "img", Some("t"), false),
            ("[::1]:5000/img", "[::1]:5000", "img", Some("latest"), false),
            (
                "quay.io/a/b_c.d__e-f--g",
                "quay.io",
                "a/b_c.d__e-f--g",
                Some("latest"),
                false,
            ),
            ("Registry.Example/x", "Registry.Example", "x", Some("latest"), false),
            ("r.io/x@SHA", "r.io", "x", None, true),
            ("r.io/x:t@SHA", "r.io", "x", Some("t"), true),
            ("x:_T.9-", "docker.io", "library/x", Some("_T.9-"), false),
        ];
        for (input, registry, repository, tag, has_digest) in cases {
            let input = input.replace("SHA", D);
            let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, *registry, "{input}");
            assert_eq!(r.repository, *repository, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest.is_some(), *has_digest, "{input}");
            // Display round-trips through the parser.
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn rejected() {
        let long = format!("r.io/{}", "a".repeat(260));
        let long_tag = format!("x:{}", "a".repeat(129));
        let cases: &[&str] = &[
            "",
            "Ubuntu",
            "docker.io/Library/x",
            "x:",
            "x:-bad",
            "x:a/b",
            &long_tag,
            "x@sha256:abc",
            "x@md5:abc",
            "a//b",
            "/x",
            "x/",
            "a/-b",
            "a/b-",
            "a/b...c",
            "a/b___c",
            "a b",
            "r.io:port/x",
            "r.io:123456/x",
            "-r.io/x",
            "[::g]:5/x",
            "x/../y",
            &long,
        ];
        for input in cases {
            assert!(ImageRef::parse(input).is_err(), "accepted {input:?}");
        }
        assert!(matches!(ImageRef::parse("Ubuntu"), Err(ReferenceError::Uppercase(_))));
    }

    #[test]
    fn fuzz_long_short_name_round_trips() {
        let input = format!("c2/{}", "a".repeat(245));
        assert!(matches!(ImageRef::parse(&input), Err(ReferenceError::TooLong(_))));
        let input = format!("c2/{}", "a".repeat(200));
        let r = ImageRef::parse(&input).unwrap();
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn manifest_reference_prefers_digest() {
        let r = ImageRef::parse(&format!("r.io/x:t@{D}")).unwrap();
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(ImageRef::parse("x").unwrap().api_host(), DOCKER_HUB_API_HOST);
    }

    proptest::proptest! {
        #[test]
        fn built_references_round_trip(
            host in proptest::option::of("[a-z][a-z0-9]{0,8}\\.[a-z]{2,4}(:[0-9]{1,5})?"),
            // A first component with `.` would be a registry host, by Docker's rule.
            path in "[a-z0-9]{1,6}([_-][a-z0-9]{1,6})?(/[a-z0-9]{1,6}((__|[._-])[a-z0-9]{1,6}){0,2}){0,3}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            pinned in proptest::bool::ANY,
        ) {
            let mut input = host.clone().map(|h| format!("{h}/")).unwrap_or_default() + &path;
            if let Some(t) = &tag { input += &format!(":{t}"); }
            if pinned { input += &format!("@{D}"); }
            let r = ImageRef::parse(&input).unwrap();
            proptest::prop_assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r.clone());
            proptest::prop_assert_eq!(r.tag.as_deref(), tag.as_deref().or((!pinned).then_some("latest")));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = ImageRef::parse(&s);
        }
    }
}
