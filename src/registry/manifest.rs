//! Manifests, indexes and image configs: media types, parsing, and platform selection.
//!
//! OCI and Docker schema-2 documents share one JSON shape, so both parse into `oci-spec`'s
//! types; the media type (from the document, else the `Content-Type` header, else the shape)
//! says which kind it is. Docker schema 1 is refused with the list of what is supported.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::error::{RegistryError, Result};
use crate::digest::Digest;

pub use crate::oci::media_types::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

/// What lamina asks for in `Accept`, best first.
pub const ACCEPTED_MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
/// Largest manifest or index accepted (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A manifest or an index, as fetched.
#[derive(Debug)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(Box<ImageManifest>),
    /// A list of manifests, one per platform.
    Index(Box<ImageIndex>),
}

/// Parse a manifest body. `content_type` is the response's header, used when the body has no
/// `mediaType` field.
pub fn parse_manifest(reference: &str, content_type: Option<&str>, body: &[u8]) -> Result<Manifest> {
    let bad = |reason: String| RegistryError::BadManifest {
        reference: reference.to_string(),
        reason,
    };
    let probe: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let declared = probe.get("mediaType").and_then(|v| v.as_str());
    let header = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    let media_type = match (declared, header) {
        (Some(d), _) => d.to_string(),
        (None, Some(h)) if ACCEPTED_MANIFEST_TYPES.contains(&h) => h.to_string(),
        _ if probe.get("manifests").is_some() => OCI_INDEX.to_string(),
        _ if probe.get("layers").is_some() => OCI_MANIFEST.to_string(),
        _ => header.unwrap_or("(none)").to_string(),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest =
                serde_json::from_value(probe).map_err(|e| bad(format!("bad image manifest: {e}")))?;
            Ok(Manifest::Image(Box::new(m)))
        }
        OCI_INDEX | DOCKER_LIST => {
            let i: ImageIndex = serde_json::from_value(probe).map_err(|e| bad(format!("bad image index: {e}")))?;
            Ok(Manifest::Index(Box::new(i)))
        }
        other => Err(RegistryError::UnsupportedMediaType {
            what: format!("manifest {reference}"),
            media_type: other.to_string(),
            supported: ACCEPTED_MANIFEST_TYPES.join(", "),
        }),
    }
}

/// Parse an image config.
pub fn parse_config(reference: &str, body: &[u8]) -> Result<ImageConfiguration> {
    serde_json::from_slice(body).map_err(|e| RegistryError::BadManifest {
        reference: reference.to_string(),
        reason: format!("bad image config: {e}"),
    })
}

/// The digest a descriptor names, validated.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e: crate::digest::DigestError| RegistryError::BadManifest {
            reference: d.digest().to_string(),
            reason: e.to_string(),
        })
}

/// An `os/arch[/variant]` platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture, in Go's names (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v7`, `v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry's platform fields name this platform. An absent variant on
    /// either side matches (`linux/arm64` is `linux/arm64/v8`).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && match (self.variant.as_deref(), variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64"
            )),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The index entry for `wanted`: an exact variant match beats an entry without a variant.
pub fn select_platform<'a>(reference: &str, index: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor> {
    let fields = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| (p.os().to_string(), p.architecture().to_string(), p.variant().clone()))
    };
    let mut best: Option<(&Descriptor, bool)> = None;
    for d in index.manifests() {
        let Some((os, arch, variant)) = fields(d) else { continue };
        if wanted.matches(&os, &arch, variant.as_deref()) {
            let exact = variant == wanted.variant;
            if best.is_none_or(|(_, e)| !e && exact) {
                best = Some((d, exact));
            }
        }
    }
    best.map(|(d, _)| d).ok_or_else(|| {
        let available: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(fields)
            .map(|(os, arch, v)| match v {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            })
            .collect();
        RegistryError::NoPlatform {
            reference: reference.to_string(),
            wanted: wanted.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index() -> ImageIndex {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        match parse_manifest("x", None, text.as_bytes()).unwrap() {
            Manifest::Index(i) => *i,
            _ => panic!("not an index"),
        }
    }

    #[test]
    fn platform_selection() {
        let i = index();
        let cases = [
            ("linux/amd64", Some(D1)),
            ("linux/arm64", Some(D2)),
            ("linux/arm64/v8", Some(D2)),
            ("linux/arm64/v9", None),
            ("windows/amd64", None),
        ];
        for (p, want) in cases {
            let got = select_platform("x", &i, &p.parse().unwrap())
                .ok()
                .map(|d| d.digest().to_string());
            assert_eq!(got.as_deref(), want, "{p}");
        }
        let err = select_platform("x", &i, &"linux/s390x".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux/amd64, linux/arm64/v8"), "{err}");
    }

    #[test]
    fn platform_parse() {
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert!("linux//v1".parse::<Platform>().is_err());
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().to_string(), "linux/arm/v7");
    }

    #[test]
    fn media_types() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_manifest("x", None, docker.as_bytes()).unwrap(),
            Manifest::Image(_)
        ));
        let v1 = r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let err = parse_manifest(
            "x",
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            v1.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, RegistryError::UnsupportedMediaType { .. }), "{err}");
        assert!(parse_manifest("x", None, b"\xff").is_err());
        assert!(parse_manifest("x", None, b"{\"layers\": 5}").is_err());
    }
}
