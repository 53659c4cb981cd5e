//! The registry client: talking to OCI distribution registries.
//!
//! ```text
//! registry/
//!   client.rs    Registry: auth, retries, redirects, manifest/blob GET (whole and Range), upload
//!   auth.rs      Docker config credentials, WWW-Authenticate challenges, token cache
//!   manifest.rs  media types, manifest/index/config parsing, platform selection
//!   resolve.rs   reference → chosen image manifest + config
//!   error.rs     RegistryError
//! ```

pub mod auth;
pub mod client;
pub mod error;
pub mod manifest;
pub mod resolve;

pub use client::{Access, Body, ClientOptions, Registry};
pub use error::RegistryError;
pub use resolve::{resolve_image, ResolvedImage};
