//! The model at the bottom of the crate: what a layer entry and a file chunk are, whatever
//! format they were read from and whoever uses them (tar reading, the layer index, the union,
//! the writable layer). Nothing here does I/O.
//!
//! ```text
//! Meta        kind, mode, owner, mtime, size, link, device, xattrs   (one entry's metadata)
//!  ├─ format::tar::TarEntry   raw path + Meta                        (as read from a tar header)
//!  ├─ index::IndexEntry       normalized path + Meta + file digest + chunk range
//!  └─ union::Node             Meta + where its bytes are + tree links
//! Chunk       file range ↔ compressed blob range, sha256, data/zeros; ChunkCodec per layer
//! ```

pub mod chunk;
pub mod entry;

pub use chunk::{Chunk, ChunkCodec, ChunkKind};
pub use entry::{EntryKind, Meta, Xattrs};
