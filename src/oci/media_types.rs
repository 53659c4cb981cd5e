//! Media types, each defined once, and what they say about a layer's compression.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The empty descriptor's media type (`{}`), the config of OCI 1.1 artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker schema-2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer: what lamina writes (zstd:chunked is an ordinary zstd layer).
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker zstd layer (seen in the wild, never standardized).
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// A layer's compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames, skippable frames allowed).
    Zstd,
}

/// Layer media types lamina reads, with the compression each declares and its OCI name.
pub const LAYER_MEDIA_TYPES: [(&str, Compression, &str); 9] = [
    (OCI_LAYER_TAR, Compression::None, OCI_LAYER_TAR),
    (OCI_LAYER_GZIP, Compression::Gzip, OCI_LAYER_GZIP),
    (OCI_LAYER_ZSTD, Compression::Zstd, OCI_LAYER_ZSTD),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ),
    (DOCKER_LAYER_TAR, Compression::None, OCI_LAYER_TAR),
    (DOCKER_LAYER_GZIP, Compression::Gzip, OCI_LAYER_GZIP),
    (DOCKER_LAYER_ZSTD, Compression::Zstd, OCI_LAYER_ZSTD),
];

/// The compression a layer media type declares, if lamina reads that type.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    LAYER_MEDIA_TYPES
        .iter()
        .find(|(t, _, _)| *t == media_type)
        .map(|(_, c, _)| *c)
}

/// The OCI name of a layer media type (Docker media types have OCI twins); unknown types are
/// kept as they are.
pub fn oci_layer_type(media_type: &str) -> &str {
    LAYER_MEDIA_TYPES
        .iter()
        .find(|(t, _, _)| *t == media_type)
        .map_or(media_type, |(_, _, oci)| oci)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_layer_types_map_to_their_oci_twins() {
        let cases = [
            (DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, Some(Compression::Gzip)),
            (DOCKER_LAYER_TAR, OCI_LAYER_TAR, Some(Compression::None)),
            (OCI_LAYER_ZSTD, OCI_LAYER_ZSTD, Some(Compression::Zstd)),
            ("application/x-unknown", "application/x-unknown", None),
        ];
        for (given, oci, compression) in cases {
            assert_eq!(oci_layer_type(given), oci, "{given}");
            assert_eq!(layer_compression(given), compression, "{given}");
        }
    }
}
