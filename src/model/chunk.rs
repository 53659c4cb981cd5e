//! A chunk of a regular file: which bytes of the file it holds, where its compressed bytes
//! are in the layer blob, and the sha256 that names it in the chunk store.

/// How a layer's chunks are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkCodec {
    /// zstd frames (zstd:chunked).
    #[default]
    Zstd,
    /// gzip members (eStargz), the chunk starting `inner_offset` into its member.
    Gzip,
    /// An unchanged gzip layer with a seekable index (`lamina index`): a chunk is inflated
    /// from the checkpoint whose first byte is its `blob_offset`, `inner_offset` bytes after it.
    Deflate,
    /// An uncompressed tar layer indexed by `lamina index`: a chunk's bytes are the blob's
    /// bytes at `blob_offset`, as they are.
    Raw,
    /// No random access (a plain tar layer): chunks exist only in the chunk store, put there
    /// while the whole layer was streamed.
    Stream,
}

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
