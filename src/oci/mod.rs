//! OCI documents: every media type lamina knows, defined once ([`media_types`]), and the
//! manifests, indexes and descriptors lamina writes, built with `oci-spec`'s types and
//! serialized canonically ([`document`]). Pure: no I/O.
//!
//! Parsing what a registry serves (schema checks, platform choice) is the registry's
//! (`registry::manifest`); it uses the names defined here.

pub mod document;
pub mod media_types;

pub use media_types::Compression;
