//! The on-disk form of a [`LayerIndex`]: little-endian, fixed-width records, read through
//! `mmap`, checked by a trailing sha256. Loading a 10,000-entry index is a few milliseconds.
//!
//! ```text
//! offset  size          field
//! 0       8             magic "LAMIDX01"
//! 8       4             version (1)
//! 12      4             flags: chunk codec (0 zstd, 1 gzip, 2 stream-only, 3 deflate, 4 raw)
//! 16      8             entry_count  E
//! 24      8             chunk_count  C
//! 32      8             xattr_count  X
//! 40      8             strings_len  S
//! 48      16            reserved (0)
//! 64      E × 128       entries: path_off u64, path_len u32, kind u8, has_digest u8, pad u16,
//!                       mode u32, uid u32, gid u32, mtime_nanos u32, mtime_secs i64, size u64,
//!                       link_off u64, link_len u32, dev_major u32, dev_minor u32,
//!                       first_chunk u32, chunk_count u32, xattr_first u32, xattr_count u32,
//!                       pad u32, digest [32], reserved [8]
//! …       C × 80        chunks: file_offset u64, len u64, blob_offset u64, blob_len u64,
//!                       inner_offset u64, digest [32], kind u8 (0 data, 1 zeros), pad [7]
//! …       X × 24        xattrs: name_off u64, value_off u64, name_len u32, value_len u32
//! …       S             strings (paths, link targets, xattr names and values)
//! end-32  32            sha256 of everything before it
//! ```
//! String offsets are relative to the start of the strings area.

use std::path::Path;

use crate::changeset::LayerPath;
use crate::index::{IndexEntry, LayerIndex};
use crate::model::ChunkCodec;
use crate::model::EntryKind;
use crate::model::{Chunk, ChunkKind};

const MAGIC: &[u8; 8] = b"LAMIDX01";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
const ENTRY_BYTES: usize = 128;
const CHUNK_BYTES: usize = 80;
const XATTR_BYTES: usize = 24;
const CHECKSUM_BYTES: usize = 32;

/// A stored index that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("layer index: {0}")]
pub struct IndexFormatError(pub String);

fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::Regular => 0,
        EntryKind::Directory => 1,
        EntryKind::Symlink => 2,
        EntryKind::HardLink => 3,
        EntryKind::CharDevice => 4,
        EntryKind::BlockDevice => 5,
        EntryKind::Fifo => 6,
    }
}

fn kind_of(code: u8) -> Option<EntryKind> {
    Some(match code {
        0 => EntryKind::Regular,
        1 => EntryKind::Directory,
        2 => EntryKind::Symlink,
        3 => EntryKind::HardLink,
        4 => EntryKind::CharDevice,
        5 => EntryKind::BlockDevice,
        6 => EntryKind::Fifo,
        _ => return None,
    })
}

/// Encode an index.
pub fn encode(index: &LayerIndex) -> Vec<u8> {
    let mut strings = Vec::new();
    let mut put = |b: &[u8]| {
        let off = strings.len() as u64;
        strings.extend_from_slice(b);
        off
    };
    let mut entries = Vec::with_capacity(index.entries.len() * ENTRY_BYTES);
    let mut xattrs = Vec::new();
    let mut xattr_count = 0u32;
    for e in &index.entries {
        let path_off = put(e.path.as_bytes());
        let link_off = put(&e.link);
        let xattr_first = xattr_count;
        for (k, v) in &e.xattrs {
            let (ko, vo) = (put(k), put(v));
            xattrs.extend_from_slice(&ko.to_le_bytes());
            xattrs.extend_from_slice(&vo.to_le_bytes());
            xattrs.extend_from_slice(&(k.len() as u32).to_le_bytes());
            xattrs.extend_from_slice(&(v.len() as u32).to_le_bytes());
            xattr_count += 1;
        }
        let r = &mut entries;
        r.extend_from_slice(&path_off.to_le_bytes());
        r.extend_from_slice(&(e.path.as_bytes().len() as u32).to_le_bytes());
        r.extend_from_slice(&[kind_code(e.kind), e.digest.is_some() as u8, 0, 0]);
        for v in [e.mode, e.uid, e.gid, e.mtime_nanos] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(&e.mtime_secs.to_le_bytes());
        r.extend_from_slice(&e.size.to_le_bytes());
        r.extend_from_slice(&link_off.to_le_bytes());
        for v in [
            e.link.len() as u32,
            e.dev_major,
            e.dev_minor,
            e.first_chunk,
            e.chunk_count,
            xattr_first,
            e.xattrs.len() as u32,
            0,
        ] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(&e.digest.unwrap_or([0; 32]));
        r.extend_from_slice(&[0; 8]);
    }
    let mut out = Vec::with_capacity(
        HEADER_BYTES + entries.len() + index.chunks.len() * CHUNK_BYTES + xattrs.len() + strings.len() + CHECKSUM_BYTES,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let codec: u32 = match index.codec {
        ChunkCodec::Zstd => 0,
        ChunkCodec::Gzip => 1,
        ChunkCodec::Stream => 2,
        ChunkCodec::Deflate => 3,
        ChunkCodec::Raw => 4,
    };
    out.extend_from_slice(&codec.to_le_bytes());
    for v in [
        index.entries.len() as u64,
        index.chunks.len() as u64,
        xattr_count as u64,
        strings.len() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&entries);
    for c in &index.chunks {
        for v in [c.file_offset, c.len, c.blob_offset, c.blob_len, c.inner_offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&c.digest);
        out.push((c.kind == ChunkKind::Zeros) as u8);
        out.extend_from_slice(&[0; 7]);
    }
    out.extend_from_slice(&xattrs);
    out.extend_from_slice(&strings);
    let sum = crate::digest::Digest::of(&out);
    let mut raw = [0u8; 32];
    hex::decode_to_slice(sum.hex(), &mut raw).expect("64 hex digits");
    out.extend_from_slice(&raw);
    out
}

/// Bounds-checked little-endian reads.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&self, at: usize, len: usize) -> Result<&[u8], IndexFormatError> {
        at.checked_add(len)
            .and_then(|end| self.0.get(at..end))
            .ok_or_else(|| IndexFormatError(format!("read of {len} bytes at {at} is out of bounds")))
    }
    fn u64(&self, at: usize) -> Result<u64, IndexFormatError> {
        Ok(u64::from_le_bytes(self.bytes(at, 8)?.try_into().expect("8")))
    }
    fn u32(&self, at: usize) -> Result<u32, IndexFormatError> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into().expect("4")))
    }
}

/// Decode an index, checking its checksum first.
pub fn decode(data: &[u8]) -> Result<LayerIndex, IndexFormatError> {
    if data.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(IndexFormatError("too short".into()));
    }
    let (body, sum) = data.split_at(data.len() - CHECKSUM_BYTES);
    if crate::digest::Digest::of(body).hex() != hex::encode(sum) {
        return Err(IndexFormatError("checksum mismatch (damaged file)".into()));
    }
    decode_unchecked(body)
}

/// Decode without the checksum (fuzzing reaches the parser through this).
pub fn decode_unchecked(body: &[u8]) -> Result<LayerIndex, IndexFormatError> {
    let r = Reader(body);
    if r.bytes(0, 8)? != MAGIC || r.u32(8)? != VERSION {
        return Err(IndexFormatError("not a lamina layer index of version 1".into()));
    }
    let count = |at| -> Result<usize, IndexFormatError> {
        usize::try_from(r.u64(at)?).map_err(|_| IndexFormatError("count too large".into()))
    };
    let codec = match r.u32(12)? {
        0 => ChunkCodec::Zstd,
        1 => ChunkCodec::Gzip,
        2 => ChunkCodec::Stream,
        3 => ChunkCodec::Deflate,
        4 => ChunkCodec::Raw,
        other => return Err(IndexFormatError(format!("unknown chunk codec {other}"))),
    };
    let (ne, nc, nx, ns) = (count(16)?, count(24)?, count(32)?, count(40)?);
    let size = |n: usize, each: usize| {
        n.checked_mul(each)
            .ok_or_else(|| IndexFormatError("count too large".into()))
    };
    let entries_at = HEADER_BYTES;
    let chunks_at = entries_at
        .checked_add(size(ne, ENTRY_BYTES)?)
        .ok_or_else(|| IndexFormatError("too large".into()))?;
    let xattrs_at = chunks_at
        .checked_add(size(nc, CHUNK_BYTES)?)
        .ok_or_else(|| IndexFormatError("too large".into()))?;
    let strings_at = xattrs_at
        .checked_add(size(nx, XATTR_BYTES)?)
        .ok_or_else(|| IndexFormatError("too large".into()))?;
    if strings_at.checked_add(ns) != Some(body.len()) {
        return Err(IndexFormatError("section sizes do not add up to the file size".into()));
    }
    let strings = Reader(r.bytes(strings_at, ns)?);
    let string = |off: u64, len: u32| -> Result<Vec<u8>, IndexFormatError> {
        let off = usize::try_from(off).map_err(|_| IndexFormatError("string offset too large".into()))?;
        Ok(strings.bytes(off, len as usize)?.to_vec())
    };
    let mut chunks = Vec::with_capacity(nc);
    for i in 0..nc {
        let at = chunks_at + i * CHUNK_BYTES;
        chunks.push(Chunk {
            file_offset: r.u64(at)?,
            len: r.u64(at + 8)?,
            blob_offset: r.u64(at + 16)?,
            blob_len: r.u64(at + 24)?,
            inner_offset: r.u64(at + 32)?,
            digest: r.bytes(at + 40, 32)?.try_into().expect("32"),
            kind: if r.bytes(at + 72, 1)?[0] == 1 {
                ChunkKind::Zeros
            } else {
                ChunkKind::Data
            },
        });
    }
    let mut entries = Vec::with_capacity(ne);
    for i in 0..ne {
        let at = entries_at + i * ENTRY_BYTES;
        let flags = r.bytes(at + 12, 2)?;
        let kind =
            kind_of(flags[0]).ok_or_else(|| IndexFormatError(format!("entry {i}: unknown kind {}", flags[0])))?;
        let (first_chunk, chunk_count) = (r.u32(at + 68)?, r.u32(at + 72)?);
        if (first_chunk as usize)
            .checked_add(chunk_count as usize)
            .is_none_or(|end| end > nc)
        {
            return Err(IndexFormatError(format!("entry {i}: chunks out of range")));
        }
        let (xattr_first, xattr_count) = (r.u32(at + 76)? as usize, r.u32(at + 80)? as usize);
        if xattr_first.checked_add(xattr_count).is_none_or(|end| end > nx) {
            return Err(IndexFormatError(format!("entry {i}: xattrs out of range")));
        }
        let mut xattrs = Vec::with_capacity(xattr_count);
        for x in xattr_first..xattr_first + xattr_count {
            let xa = xattrs_at + x * XATTR_BYTES;
            xattrs.push((
                string(r.u64(xa)?, r.u32(xa + 16)?)?,
                string(r.u64(xa + 8)?, r.u32(xa + 20)?)?,
            ));
        }
        let path = string(r.u64(at)?, r.u32(at + 8)?)?;
        let path = LayerPath::normalize(&path).map_err(|e| IndexFormatError(format!("entry {i}: {e}")))?;
        entries.push(IndexEntry {
            path,
            meta: crate::model::Meta {
                kind,
                mode: r.u32(at + 16)?,
                uid: r.u32(at + 20)?,
                gid: r.u32(at + 24)?,
                mtime_nanos: r.u32(at + 28)?,
                mtime_secs: r.u64(at + 32)? as i64,
                size: r.u64(at + 40)?,
                link: string(r.u64(at + 48)?, r.u32(at + 56)?)?,
                dev_major: r.u32(at + 60)?,
                dev_minor: r.u32(at + 64)?,
                xattrs,
            },
            digest: (flags[1] == 1)
                .then(|| r.bytes(at + 88, 32).map(|d| d.try_into().expect("32")))
                .transpose()?,
            first_chunk,
            chunk_count,
        });
    }
    Ok(LayerIndex { codec, entries, chunks })
}

/// Write an index file atomically (temp name, then rename).
pub fn save(index: &LayerIndex, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&tmp, encode(index))?;
    std::fs::rename(tmp, path)
}

/// Load an index file through mmap.
pub fn load(path: &Path) -> Result<LayerIndex, IndexFormatError> {
    let file = std::fs::File::open(path).map_err(|e| IndexFormatError(format!("{}: {e}", path.display())))?;
    // SAFETY: the file is only ever replaced by rename, never written in place, so the mapped
    // bytes cannot change under us; a file damaged some other way fails the checksum.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IndexFormatError(format!("{}: {e}", path.display())))?;
    decode(&map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = (IndexEntry, Vec<Chunk>)> {
        (
            "[a-z]{1,8}(/[a-z_]{1,8}){0,3}",
            0u8..7,
            any::<(u32, u32, u32, u32, i64, u64)>(),
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..10),
                    proptest::collection::vec(any::<u8>(), 0..10),
                ),
                0..3,
            ),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::collection::vec(any::<(u64, u64, u64, u64, u64, [u8; 32], bool)>(), 0..4),
        )
            .prop_map(
                |(p, k, (mode, uid, gid, nanos, secs, size), link, xattrs, digest, chunks)| {
                    let chunks: Vec<Chunk> = chunks
                        .into_iter()
                        .map(|(a, b, c, d, e, digest, z)| Chunk {
                            file_offset: a,
                            len: b,
                            blob_offset: c,
                            blob_len: d,
                            inner_offset: e,
                            digest,
                            kind: if z { ChunkKind::Zeros } else { ChunkKind::Data },
                        })
                        .collect();
                    let e = IndexEntry {
                        path: LayerPath::normalize(p.as_bytes()).unwrap(),
                        meta: crate::model::Meta {
                            kind: kind_of(k).unwrap(),
                            mode,
                            uid,
                            gid,
                            mtime_secs: secs,
                            mtime_nanos: nanos,
                            size,
                            link,
                            dev_major: uid,
                            dev_minor: gid,
                            xattrs,
                        },
                        digest,
                        first_chunk: 0,
                        chunk_count: chunks.len() as u32,
                    };
                    (e, chunks)
                },
            )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(parts in proptest::collection::vec(entry(), 0..20)) {
            let mut index = LayerIndex::default();
            for (mut e, c) in parts {
                e.first_chunk = index.chunks.len() as u32;
                index.chunks.extend(c);
                index.entries.push(e);
            }
            let bytes = encode(&index);
            prop_assert_eq!(decode(&bytes).unwrap(), index);
        }

        #[test]
        fn damaged_files_are_refused(flip in 0usize..200) {
            let mut index = LayerIndex::default();
            index.entries.push(IndexEntry {
                path: LayerPath::normalize(b"a/b").unwrap(),
                meta: crate::model::Meta {
                    kind: EntryKind::Regular,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime_secs: 0,
                    mtime_nanos: 0,
                    size: 0,
                    link: vec![],
                    dev_major: 0,
                    dev_minor: 0,
                    xattrs: vec![],
                },
                digest: None,
                first_chunk: 0,
                chunk_count: 0,
            });
            let mut bytes = encode(&index);
            let i = flip % bytes.len();
            bytes[i] ^= 0x40;
            prop_assert!(decode(&bytes).is_err());
        }
    }

    #[test]
    fn ten_thousand_entries_load_in_milliseconds() {
        // Not a timing assertion: prints the figure and checks the round trip at this size.
        let mut index = LayerIndex::default();
        for i in 0..10_000 {
            index.entries.push(IndexEntry {
                path: LayerPath::normalize(format!("usr/lib/pkg{}/file{i}", i % 97).as_bytes()).unwrap(),
                meta: crate::model::Meta {
                    kind: EntryKind::Regular,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime_secs: 1,
                    mtime_nanos: 0,
                    size: 10,
                    link: vec![],
                    dev_major: 0,
                    dev_minor: 0,
                    xattrs: vec![],
                },
                digest: Some([7; 32]),
                first_chunk: i,
                chunk_count: 1,
            });
            index.chunks.push(Chunk {
                file_offset: 0,
                len: 10,
                blob_offset: i as u64 * 100,
                blob_len: 50,
                inner_offset: 0,
                digest: [7; 32],
                kind: ChunkKind::Data,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lidx");
        save(&index, &p).unwrap();
        let t = std::time::Instant::now();
        let loaded = load(&p).unwrap();
        eprintln!(
            "loaded 10,000 entries in {:?} ({} bytes)",
            t.elapsed(),
            std::fs::metadata(&p).unwrap().len()
        );
        assert_eq!(loaded, index);
    }
}
