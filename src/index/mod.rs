//! `LayerIndex`: one compact description of a layer's entries and, for regular files, where
//! each chunk's bytes are — built from any TOC (zstd:chunked, eStargz), whatever its dialect.
//!
//! ```text
//! LayerIndex
//!   entries[i]: path, kind, mode, owner, mtime, size, link, rdev, xattrs, digest,
//!               chunks[first_chunk .. first_chunk + chunk_count]
//!   chunks[j]:  file_offset, len            (uncompressed, inside the file)
//!               blob_offset, blob_len       (compressed frame(s) inside the layer blob)
//!               inner_offset                (eStargz: where the chunk starts inside its gzip member)
//!               digest, zeros               (sha256 of the uncompressed chunk; a run of zeros)
//! ```
//!
//! Invariants (checked by the TOC readers before an index exists): every path is normalized
//! ([`crate::changeset::LayerPath`]); a regular file's chunks are in order, start at 0, touch
//! without gaps or overlap and end at its size; every chunk's blob range lies inside the blob.

pub mod disk;
pub mod overlay_form;

use crate::changeset::LayerPath;
use crate::model::{Chunk, ChunkCodec};
use crate::model::{EntryKind, Meta};

/// One entry of a layer: its normalized path and [`Meta`], where a regular file's chunks are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Normalized path (may be a whiteout name: the union applies the changeset rules).
    pub path: LayerPath,
    /// Kind, mode, owner, mtime, size, link (symlink target, or the normalized target path of
    /// a hard link), device numbers, xattrs.
    pub meta: Meta,
    /// sha256 of the whole file (regular files with content).
    pub digest: Option<[u8; 32]>,
    /// Index of the first chunk in [`LayerIndex::chunks`].
    pub first_chunk: u32,
    /// Number of chunks.
    pub chunk_count: u32,
}

crate::extends_meta!(IndexEntry);

impl IndexEntry {
    /// An entry with no chunks yet (see [`LayerIndex::push_entry`]).
    pub fn new(path: LayerPath, meta: Meta, digest: Option<[u8; 32]>) -> IndexEntry {
        IndexEntry {
            path,
            meta,
            digest,
            first_chunk: 0,
            chunk_count: 0,
        }
    }
}

/// A layer's entries and chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerIndex {
    /// How the chunks are compressed in the blob.
    pub codec: ChunkCodec,
    /// Entries in layer order.
    pub entries: Vec<IndexEntry>,
    /// All chunks, grouped by entry.
    pub chunks: Vec<Chunk>,
}

impl LayerIndex {
    /// The chunks of one entry.
    pub fn chunks_of(&self, entry: &IndexEntry) -> &[Chunk] {
        let start = entry.first_chunk as usize;
        &self.chunks[start..start + entry.chunk_count as usize]
    }

    /// Append an entry with its chunks (setting its `first_chunk` and `chunk_count`).
    pub fn push_entry(&mut self, mut entry: IndexEntry, chunks: Vec<Chunk>) {
        entry.first_chunk = self.chunks.len() as u32;
        entry.chunk_count = chunks.len() as u32;
        self.chunks.extend(chunks);
        self.entries.push(entry);
    }

    /// Total uncompressed bytes of regular files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::Regular)
            .map(|e| e.size)
            .sum()
    }
}
