//! The OCI documents lamina writes (image manifests, indexes, descriptors), built with
//! `oci-spec`'s types and serialized canonically: object keys sorted, no spaces, so the same
//! document always has the same digest (`oci-spec` keeps annotations in a `HashMap`, whose
//! order would otherwise change from run to run).
//!
//! Image configs are edited as JSON values instead (`commit`): a typed round trip would drop
//! the fields `oci-spec` does not model (Docker's `container_config`, `docker_version`, …) and
//! so change the image.

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType, Platform};
use serde::Serialize;

use super::media_types::{OCI_INDEX, OCI_MANIFEST};
use crate::digest::Digest;

/// Annotations of a descriptor or manifest.
pub type Annotations = HashMap<String, String>;

/// A descriptor of `size` bytes named by `digest`; empty annotations are left out.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64, annotations: Option<Annotations>) -> Descriptor {
    let digest: oci_spec::image::Digest = digest
        .to_string()
        .parse()
        .expect("a Digest is always a well-formed sha256 digest");
    let mut d = Descriptor::new(MediaType::from(media_type), size, digest);
    d.set_annotations(annotations.filter(|a| !a.is_empty()));
    d
}

/// A descriptor of a platform's image manifest, for an index.
pub fn manifest_descriptor(digest: &Digest, size: u64, platform: Option<Platform>) -> Descriptor {
    let mut d = descriptor(OCI_MANIFEST, digest, size, None);
    d.set_platform(platform);
    d
}

/// An OCI image manifest (schema 2). `artifact_type` and `subject` make it an OCI 1.1
/// artifact that refers to another manifest.
pub fn image_manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: Option<Annotations>,
    artifact_type: Option<&str>,
    subject: Option<Descriptor>,
) -> ImageManifest {
    let mut m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(OCI_MANIFEST))
        .config(config)
        .layers(layers)
        .build()
        .expect("every required field is set");
    m.set_annotations(annotations.filter(|a| !a.is_empty()));
    m.set_artifact_type(artifact_type.map(MediaType::from));
    m.set_subject(subject);
    m
}

/// An OCI image index of `manifests`.
pub fn image_index(manifests: Vec<Descriptor>) -> ImageIndex {
    let mut i = ImageIndex::default();
    i.set_schema_version(2);
    i.set_media_type(Some(MediaType::from(OCI_INDEX)));
    i.set_manifests(manifests);
    i
}

/// The canonical bytes of a document: keys sorted at every level, compact.
pub fn canonical_json<T: Serialize>(doc: &T) -> Result<Vec<u8>, serde_json::Error> {
    // serde_json's `Value` keeps objects in a sorted map: one pass through it sorts every key.
    serde_json::to_vec(&serde_json::to_value(doc)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_types::{OCI_CONFIG, OCI_LAYER_ZSTD};

    #[test]
    fn manifests_are_canonical_and_parse_back() {
        let d = Digest::of(b"x");
        let annotations = |n: usize| -> Annotations { (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect() };
        let doc = |n| {
            let layer = descriptor(OCI_LAYER_ZSTD, &d, 1, Some(annotations(n)));
            image_manifest(descriptor(OCI_CONFIG, &d, 1, None), vec![layer], None, None, None)
        };
        let bytes = canonical_json(&doc(20)).unwrap();
        // The same document, however its maps iterate, gives the same bytes.
        for _ in 0..5 {
            assert_eq!(canonical_json(&doc(20)).unwrap(), bytes);
        }
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"config":{"digest":"sha256:"#), "{text}");
        assert!(!text.contains("annotations\":{}"));
        let back: ImageManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.layers()[0].annotations().as_ref().unwrap().len(), 20);
        assert_eq!(back.media_type(), &Some(MediaType::ImageManifest));
        // No annotations: the key is left out.
        let text = String::from_utf8(canonical_json(&doc(0)).unwrap()).unwrap();
        assert!(!text.contains("annotations"), "{text}");
    }
}
