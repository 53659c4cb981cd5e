//! lamina mounts container images straight from an OCI registry, without pulling them first,
//! and also does the classic full pull so the two can be compared.
//!
//! ```text
//! reference ──► registry ──► resolve (manifest, config, layers)
//!                               └──► pull: download (parallel, resumable) ──► spool ──► apply ──► DIR
//! ```
//!
//! Modules are named with the words of the design: [`reference`], [`registry`], [`changeset`]
//! (the OCI layer rules shared by every consumer of layers), [`apply`] (the reference applier),
//! [`pull`].

pub mod apply;
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
pub mod model;
pub mod mount;
pub mod oci;
pub mod overlay;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod run;
pub mod store;
pub mod union;
pub mod upper;
pub mod view;
