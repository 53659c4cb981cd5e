//! Layer formats: how entries and their metadata are read out of layer bytes.
//!
//! ```text
//! format/
//!   tar.rs   one tar entry's metadata (type, mode, owner, times, link, device, xattrs),
//!            PAX records applied
//! ```

pub mod chunk;
pub mod compression;
pub mod estargz;
pub mod gzip_index;
pub mod tar;
pub mod tar_scan;
pub mod tar_split;
pub mod tar_walk;
pub mod toc;
pub mod window_trim;
pub mod writer;
pub mod zran;
pub mod zstd_chunked;
