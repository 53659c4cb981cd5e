//! Walking an uncompressed layer tar once, in stream order, into index entries: each regular
//! file's bytes are cut into fixed pieces of [`PIECE_BYTES`] (files smaller than that are one
//! piece), each named by its sha256 and handed to the caller as it passes.
//!
//! Used for plain layers (the pieces go into the chunk store while the layer streams) and for
//! gzip indexes (only the digests and where each piece is in the stream are kept). The same
//! cut gives the same chunk digests, so a file cached one way is found the other way.

use std::io::{self, Read};

use crate::changeset::LayerPath;
use crate::format::tar::{entry_meta, is_metadata_only};
use crate::index::IndexEntry;
use crate::model::EntryKind;
use crate::model::{Chunk, ChunkKind};

/// Size of the pieces files are cut into.
pub const PIECE_BYTES: usize = 1 << 20;

/// The data position `walk_tar` gives a GNU sparse file (its bytes are not contiguous in the
/// stream).
pub const SPARSE: u64 = u64::MAX;

/// One piece of a file as it passes: its digest and bytes.
pub type PieceSink<'a> = dyn FnMut(&[u8; 32], &[u8]) -> io::Result<()> + 'a;

/// Walk `tar`, handing each data piece to `piece` and then each entry (with `chunk_count`
/// set; `first_chunk` is the receiver's), its chunks and the stream offset of its data to
/// `each`, in stream order. Chunks have `blob_offset`, `blob_len` and `inner_offset` 0. The
/// first `skip` entries were handed over by an earlier attempt: they are read past, their
/// pieces not handed over again. Reads the stream to its end and gives the reader back.
pub fn walk_tar<R: Read>(
    tar: R,
    skip: usize,
    piece: &mut PieceSink<'_>,
    mut each: impl FnMut(IndexEntry, Vec<Chunk>, u64) -> io::Result<()>,
) -> io::Result<R> {
    let mut archive = tar::Archive::new(tar);
    let mut buf = vec![0u8; PIECE_BYTES];
    let mut seen = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if is_metadata_only(entry.header().entry_type()) {
            continue;
        }
        seen += 1;
        if seen <= skip {
            continue;
        }
        // A GNU sparse file's bytes are not where the header says (its map comes first):
        // no position is given for it.
        let data_at = if entry.header().entry_type() == tar::EntryType::GNUSparse {
            SPARSE
        } else {
            entry.raw_file_position()
        };
        let meta = entry_meta(&mut entry)?;
        let bad = |e: crate::changeset::PathError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        let path = LayerPath::normalize(&meta.path).map_err(bad)?;
        let link = match meta.kind {
            EntryKind::HardLink => LayerPath::normalize(&meta.link).map_err(bad)?.as_bytes().to_vec(),
            _ => meta.link.clone(),
        };
        let mut chunks = Vec::new();
        let mut file_hash = crate::digest::Hasher::new();
        let mut offset = 0u64;
        if meta.kind == EntryKind::Regular {
            while offset < meta.size {
                let want = (meta.size - offset).min(PIECE_BYTES as u64) as usize;
                entry.read_exact(&mut buf[..want])?;
                let data = &buf[..want];
                file_hash.update(data);
                let digest = crate::digest::Digest::of(data).bytes();
                let zeros = data.iter().all(|b| *b == 0);
                piece(&digest, data)?;
                chunks.push(Chunk {
                    file_offset: offset,
                    len: want as u64,
                    blob_offset: 0,
                    blob_len: 0,
                    inner_offset: 0,
                    digest,
                    kind: if zeros { ChunkKind::Zeros } else { ChunkKind::Data },
                });
                offset += want as u64;
            }
        }
        let regular = meta.kind == EntryKind::Regular;
        let digest = (regular && meta.size > 0).then(|| file_hash.finish().bytes());
        let mut meta = meta.meta;
        meta.link = link;
        if !regular {
            meta.size = 0;
        }
        let mut entry = IndexEntry::new(path, meta, digest);
        entry.chunk_count = chunks.len() as u32;
        each(entry, chunks, data_at)?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
    Ok(rest)
}
