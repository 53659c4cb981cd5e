//! Blobs: everything that moves a blob's bytes, shared by `pull`, `mount`, `convert` and
//! `commit`.
//!
//! ```text
//! blob/
//!   read.rs      Registry::blob_bytes (whole, verified) / blob_stream (from an offset) /
//!                blob_range (one Range request) / blob_exists; Content-Range parsing
//!   upload.rs    Registry::upload_blob / mount_blob (cross-repository)
//!   check.rs     BlobCheck: size + digest of a streamed blob, checked at its end
//!   download.rs  download_layer: a whole layer into a Spool, resumed after breaks, verified
//!   spool.rs     Spool: a file being downloaded that readers follow while it grows
//! ```

pub mod check;
pub mod download;
pub mod read;
pub mod spool;
pub mod upload;

pub use check::BlobCheck;
pub use download::download_layer;
pub use read::{parse_content_range, BlobStream, RangeStream};
pub use spool::Spool;
