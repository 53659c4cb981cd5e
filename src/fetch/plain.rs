//! Indexing a plain tar layer (no TOC) by streaming it once: every entry goes into a
//! [`LayerIndex`](crate::index::LayerIndex), and every regular file's bytes go into the chunk store as they pass, so the
//! layer then mounts from the cache alone.
//!
//! Chunks are fixed pieces of `PLAIN_CHUNK_BYTES` (files smaller than that are one chunk): the
//! bytes are already here, so nothing is gained by content-defined boundaries, and the pieces
//! bound the memory used per file.

use std::io::{self, Read};

use crate::cache::chunks::ChunkStore;
use crate::changeset::LayerPath;
use crate::format::tar::{entry_meta, is_metadata_only};
use crate::index::IndexEntry;
use crate::model::EntryKind;
use crate::model::{Chunk, ChunkKind};

/// Size of the pieces a plain layer's files are cut into.
pub const PLAIN_CHUNK_BYTES: usize = 1 << 20;

fn raw(d: &crate::digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(d.hex(), &mut out).expect("64 hex digits");
    out
}

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
    let mut archive = tar::Archive::new(tar);
    let mut buf = vec![0u8; PLAIN_CHUNK_BYTES];
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
                let want = (meta.size - offset).min(PLAIN_CHUNK_BYTES as u64) as usize;
                entry.read_exact(&mut buf[..want])?;
                let data = &buf[..want];
                file_hash.update(data);
                let digest = raw(&crate::digest::Digest::of(data));
                store.put(&digest, data)?;
                chunks.push(Chunk {
                    file_offset: offset,
                    len: want as u64,
                    blob_offset: 0,
                    blob_len: 0,
                    inner_offset: 0,
                    digest,
                    kind: if data.iter().all(|b| *b == 0) {
                        ChunkKind::Zeros
                    } else {
                        ChunkKind::Data
                    },
                });
                offset += want as u64;
            }
        }
        let regular = meta.kind == EntryKind::Regular;
        let digest = (regular && meta.size > 0).then(|| raw(&file_hash.finish()));
        let mut meta = meta.meta;
        meta.link = link;
        if !regular {
            meta.size = 0;
        }
        let mut entry = IndexEntry::new(path, meta, digest);
        entry.chunk_count = chunks.len() as u32;
        each(entry, chunks)?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
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
