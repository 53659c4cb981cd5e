//! The registry client: talking to OCI distribution registries.
//!
//! ```text
//! registry/
//!   client.rs     Registry: settings, identity, manifest GET/PUT
//!   transport.rs  send: retries, redirects by hand, 401 → challenge, bounded body reads
//!   token.rs      the auth flow: challenges, Basic headers, bearer tokens per scope
//!   auth.rs       Docker config credentials, WWW-Authenticate parsing, token cache
//!   blob/         blob reads, uploads, resumable downloads into spools, digest checks
//!   manifest.rs   manifest/index/config parsing, platform selection
//!   referrers.rs  OCI 1.1 referrers API, and the fallback tag of registries without it
//!   resolve.rs    reference → chosen image manifest + config + checked layers
//!   error.rs      RegistryError
//! ```

pub mod auth;
pub mod blob;
pub mod certs;
pub mod client;
mod credhelper;
pub mod error;
pub mod hosts;
pub mod manifest;
pub mod referrers;
pub mod resolve;
mod token;
mod transport;

pub use client::{Access, Body, ClientOptions, Registry};
pub use error::RegistryError;
pub use resolve::{resolve_image, resolve_image_with, PullPolicy, ResolvedImage};
