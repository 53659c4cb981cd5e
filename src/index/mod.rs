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

use crate::changeset::LayerPath;
use crate::format::chunk::ChunkCodec;
use crate::format::tar::EntryKind;

/// Whether a chunk holds data or a run of zeros (no need to fetch it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// Ordinary data.
    Data,
    /// All zeros.
    Zeros,
}

/// One chunk of a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk inside the file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub len: u64,
    /// Offset of the chunk's compressed bytes in the blob.
    pub blob_offset: u64,
    /// Length of the compressed bytes.
    pub blob_len: u64,
    /// eStargz only: offset inside the decompressed member where the chunk starts.
    pub inner_offset: u64,
    /// sha256 of the uncompressed chunk.
    pub digest: [u8; 32],
    /// Data or zeros.
    pub kind: ChunkKind,
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Normalized path (may be a whiteout name: the union applies the changeset rules).
    pub path: LayerPath,
    /// Object kind.
    pub kind: EntryKind,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds.
    pub mtime_nanos: u32,
    /// File size (regular files).
    pub size: u64,
    /// Symlink target, or hard-link target path (normalized) for hard links.
    pub link: Vec<u8>,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// xattrs, name → value.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// sha256 of the whole file (regular files with content).
    pub digest: Option<[u8; 32]>,
    /// Index of the first chunk in [`LayerIndex::chunks`].
    pub first_chunk: u32,
    /// Number of chunks.
    pub chunk_count: u32,
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
