//! Indexing a plain tar layer (no TOC) by streaming it once: every entry goes into a
//! [`LayerIndex`](crate::index::LayerIndex), and every regular file's bytes go into the chunk store as they pass, so the
//! layer then mounts from the cache alone.
//!
//! Chunks are fixed pieces of `PLAIN_CHUNK_BYTES` (files smaller than that are one chunk): the
//! bytes are already here, so nothing is gained by content-defined boundaries, and the pieces
//! bound the memory used per file.

use std::io::{self, Read};

use crate::cache::chunks::ChunkStore;
use crate::format::tar_walk::walk_tar;
use crate::index::IndexEntry;
use crate::model::Chunk;

/// Size of the pieces a plain layer's files are cut into.
pub const PLAIN_CHUNK_BYTES: usize = crate::format::tar_walk::PIECE_BYTES;

/// Stream an uncompressed layer tar, storing each regular file's bytes as chunks and then
/// handing its entry (with `chunk_count` set; `first_chunk` is the receiver's) and chunks to
/// `each`, in stream order. The first `skip` entries were handed over by an earlier attempt:
/// they are read past, not stored again. Reads the stream to its end.
pub fn stream_plain_layer<R: Read>(
    tar: R,
    store: &ChunkStore,
    skip: usize,
    mut each: impl FnMut(IndexEntry, Vec<Chunk>) -> io::Result<()>,
) -> io::Result<()> {
    let mut put = |digest: &[u8; 32], data: &[u8]| store.put(digest, data);
    walk_tar(tar, skip, &mut put, |entry, chunks, _| each(entry, chunks))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_indexed_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let big: Vec<u8> = (0..(PLAIN_CHUNK_BYTES * 2 + 10)).map(|i| (i % 253) as u8).collect();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [("a/small", &b"hello"[..]), ("a/big", &big[..]), ("a/empty", &b""[..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, name, data).unwrap();
        }
        let mut index = crate::index::LayerIndex::default();
        stream_plain_layer(b.into_inner().unwrap().as_slice(), &store, 0, |entry, chunks| {
            index.push_entry(entry, chunks);
            Ok(())
        })
        .unwrap();
        assert_eq!(index.entries.len(), 3);
        let big_entry = &index.entries[1];
        assert_eq!(index.chunks_of(big_entry).len(), 3);
        let mut got = Vec::new();
        for c in index.chunks_of(big_entry) {
            let mut piece = vec![0u8; c.len as usize];
            assert_eq!(store.read_at(&c.digest, 0, &mut piece).unwrap(), piece.len());
            got.extend(piece);
        }
        assert_eq!(got, big);
        assert_eq!(index.chunks_of(&index.entries[2]).len(), 0);
    }
}
