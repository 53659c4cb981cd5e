//! lamina mounts container images straight from an OCI registry, without pulling them first,
//! and also does the classic full pull so the two can be compared.
//!
//! The modules are layers, each using only those below it (ARCHITECTURE.md has the picture;
//! `scripts/check-layers.sh` checks it): [`model`], [`digest`], [`changeset`] at the bottom;
//! [`index`], [`oci`], [`reference`]; [`format`] (pure parsers and writers), [`registry`],
//! [`cache`], [`union`]; [`fetch`], [`apply`], [`store`]; [`view`], the image as the front doors
//! read it; [`fs`] and [`overlay`], the front doors; [`mount`], [`snapshotter`] (containerd's
//! proxy plugin) and [`layerstore`] (containers/storage's additional layer store); and the commands ([`pull`],
//! [`convert`], [`commit`], [`run`], [`cli`]).

pub mod apply;
pub mod bench;
pub mod cache;
pub mod changeset;
pub mod cli;
pub mod commit;
pub mod config;
pub mod convert;
pub mod digest;
pub mod fetch;
pub mod format;
pub mod fs;
pub mod index;
pub mod layerstore;
pub mod model;
pub mod mount;
pub mod oci;
pub mod overlay;
pub mod profile;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod run;
pub mod snapshotter;
pub mod store;
pub mod union;
pub mod upper;
pub mod view;
