//! The TOC JSON shared by zstd:chunked and eStargz (`{"version":1,"entries":[…]}`), and its
//! checked conversion into a [`LayerIndex`].
//!
//! Every number and name in a TOC is untrusted: offsets must lie inside the blob, a file's
//! chunks must tile it exactly, counts are capped, and every error names the layer and entry.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::changeset::LayerPath;
use crate::index::{IndexEntry, LayerIndex};
use crate::model::EntryKind;
use crate::model::{Chunk, ChunkKind};

/// Most TOC entries accepted (a 10,000-file layer has ~10,000; chunks add a few per big file).
pub const MAX_TOC_ENTRIES: usize = 4_000_000;
/// Largest TOC accepted, compressed or not (Podman's own cap).
pub const MAX_TOC_BYTES: u64 = 150 << 20;

/// The TOC document.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Toc {
    /// Always 1.
    pub version: i64,
    /// Entries in tar order; `chunk` entries follow their `reg` entry. At most
    /// [`MAX_TOC_ENTRIES`]: the cap is checked while parsing, before the entries past it are
    /// held in memory.
    #[serde(deserialize_with = "capped::<_, MAX_TOC_ENTRIES, _>")]
    pub entries: Vec<TocEntry>,
    /// Digest of the compressed tar-split frame (current zstd:chunked dialect).
    #[serde(rename = "tarSplitDigest", default, skip_serializing_if = "Option::is_none")]
    pub tar_split_digest: Option<String>,
}

/// Parse a TOC document. Valid JSON that breaks a rule (a cap, a field of the wrong type)
/// says what, not that the JSON is bad.
pub fn parse(json: &[u8]) -> Result<Toc, String> {
    serde_json::from_slice(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("TOC: {e}"),
        _ => format!("TOC is not valid JSON: {e}"),
    })
}

/// A JSON array of at most `CAP` elements: an error at element `CAP + 1`, not after the whole
/// array was built (a 150 MiB TOC of tiny entries would hold millions of them).
fn capped<'de, T: Deserialize<'de>, const CAP: usize, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct Capped<T, const CAP: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const CAP: usize> serde::de::Visitor<'de> for Capped<T, CAP> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {CAP} entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(e) = seq.next_element()? {
                if out.len() == CAP {
                    return Err(serde::de::Error::custom(format!(
                        "more than {CAP} entries; at most {CAP} accepted"
                    )));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Capped::<T, CAP>(std::marker::PhantomData))
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One TOC entry, field names as containers/storage and stargz-snapshotter write them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TocEntry {
    /// reg, hardlink, symlink, dir, char, block, fifo, chunk
    #[serde(rename = "type")]
    pub kind: String,
    /// Path as in the tar.
    pub name: String,
    /// Symlink or hard-link target.
    #[serde(rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Mode bits.
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    /// File size.
    #[serde(skip_serializing_if = "is_zero")]
    pub size: i64,
    /// Owner.
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    /// Group.
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    /// RFC 3339 modification time.
    #[serde(rename = "modtime", skip_serializing_if = "Option::is_none")]
    pub mod_time: Option<String>,
    /// Device major.
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    /// Device minor.
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// xattrs, values base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<HashMap<String, String>>,
    /// sha256 of the whole file (`sha256:…`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Start of the entry's (first chunk's) compressed bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: i64,
    /// End of the entry's compressed bytes (zstd:chunked).
    #[serde(rename = "endOffset", skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    /// Uncompressed chunk size (0: the whole file is one chunk).
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    /// Chunk offset inside the file.
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    /// sha256 of the uncompressed chunk.
    #[serde(rename = "chunkDigest", skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    /// "" (data) or "zeros".
    #[serde(rename = "chunkType", skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
    /// eStargz: offset inside the gzip member.
    #[serde(rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
}

/// A TOC that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: TOC{}: {reason}", entry.as_ref().map(|e| format!(" entry {e:?}")).unwrap_or_default())]
pub struct TocError {
    /// The layer digest.
    pub layer: String,
    /// The entry at fault, if one.
    pub entry: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// How the end of each chunk's compressed bytes is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// zstd:chunked: `endOffset` on the file entry, next chunk's `offset` in between.
    ZstdChunked,
    /// eStargz: a gzip member ends where the next member (or the TOC) starts.
    Estargz {
        /// Where the TOC's own member starts: the end of the last payload member.
        toc_offset: u64,
    },
}

/// Check a TOC and turn it into a [`LayerIndex`]. `blob_size` bounds every offset.
pub fn to_index(layer: &str, toc: &Toc, blob_size: u64, dialect: Dialect) -> Result<LayerIndex, TocError> {
    let err = |entry: Option<&str>, reason: String| TocError {
        layer: layer.to_string(),
        entry: entry.map(str::to_string),
        reason,
    };
    if toc.version != 1 {
        return Err(err(None, format!("unsupported version {}", toc.version)));
    }
    if toc.entries.len() > MAX_TOC_ENTRIES {
        return Err(err(
            None,
            format!("{} entries; at most {MAX_TOC_ENTRIES} accepted", toc.entries.len()),
        ));
    }
    let member_ends = match dialect {
        Dialect::Estargz { toc_offset } => Some(member_end_map(toc, toc_offset)),
        Dialect::ZstdChunked => None,
    };
    let mut index = LayerIndex {
        codec: match dialect {
            Dialect::ZstdChunked => crate::model::ChunkCodec::Zstd,
            Dialect::Estargz { .. } => crate::model::ChunkCodec::Gzip,
        },
        ..LayerIndex::default()
    };
    let mut i = 0;
    while i < toc.entries.len() {
        let e = &toc.entries[i];
        let fail = |reason: String| err(Some(&e.name), reason);
        if e.kind == "chunk" {
            return Err(fail("chunk entry without its file".into()));
        }
        let mut entry = entry_metadata(e).map_err(fail)?;
        i += 1;
        if entry.kind == EntryKind::Regular && entry.size > 0 {
            let mut parts = vec![e];
            while i < toc.entries.len() && toc.entries[i].kind == "chunk" {
                if toc.entries[i].name != e.name {
                    return Err(err(
                        Some(&toc.entries[i].name),
                        format!("chunk follows a different file {:?}", e.name),
                    ));
                }
                parts.push(&toc.entries[i]);
                i += 1;
            }
            entry.first_chunk = index.chunks.len() as u32;
            let chunks = file_chunks(&parts, entry.size, blob_size, member_ends.as_ref()).map_err(fail)?;
            entry.chunk_count = chunks.len() as u32;
            index.chunks.extend(chunks);
        }
        index.entries.push(entry);
    }
    Ok(index)
}

/// eStargz: each member offset → the next larger offset (or the TOC offset).
fn member_end_map(toc: &Toc, toc_offset: u64) -> Vec<u64> {
    let mut offsets: Vec<u64> = toc
        .entries
        .iter()
        .filter(|e| e.offset > 0)
        .map(|e| e.offset as u64)
        .collect();
    offsets.push(toc_offset);
    offsets.sort_unstable();
    offsets.dedup();
    offsets
}

fn entry_metadata(e: &TocEntry) -> Result<IndexEntry, String> {
    let kind = match e.kind.as_str() {
        "reg" => EntryKind::Regular,
        "dir" => EntryKind::Directory,
        "symlink" => EntryKind::Symlink,
        "hardlink" => EntryKind::HardLink,
        "char" => EntryKind::CharDevice,
        "block" => EntryKind::BlockDevice,
        "fifo" => EntryKind::Fifo,
        other => return Err(format!("unknown entry type {other:?}")),
    };
    let path = LayerPath::normalize(e.name.as_bytes()).map_err(|x| x.to_string())?;
    let small = |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} out of range"));
    let (mtime_secs, mtime_nanos) = match &e.mod_time {
        Some(t) => parse_time(t)?,
        None => (0, 0),
    };
    let mut xattrs = Vec::new();
    for (k, v) in e.xattrs.iter().flatten() {
        let value = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| format!("xattr {k:?} is not base64"))?;
        if value.len() > crate::model::entry::MAX_XATTR_VALUE_BYTES {
            return Err(format!("xattr {k:?} too large"));
        }
        xattrs.push((k.as_bytes().to_vec(), value));
    }
    xattrs.sort();
    if xattrs.len() > crate::model::entry::MAX_XATTRS_PER_ENTRY {
        return Err("too many xattrs".into());
    }
    let link = match kind {
        EntryKind::HardLink => LayerPath::normalize(e.link_name.as_bytes())
            .map_err(|x| format!("link target: {x}"))?
            .as_bytes()
            .to_vec(),
        _ => e.link_name.as_bytes().to_vec(),
    };
    if e.size < 0 {
        return Err(format!("negative size {}", e.size));
    }
    Ok(IndexEntry {
        path,
        meta: crate::model::Meta {
            kind,
            mode: small(e.mode & 0o7777, "mode")?,
            uid: small(e.uid, "uid")?,
            gid: small(e.gid, "gid")?,
            mtime_secs,
            mtime_nanos,
            size: if kind == EntryKind::Regular { e.size as u64 } else { 0 },
            link,
            dev_major: small(e.dev_major, "devMajor")?,
            dev_minor: small(e.dev_minor, "devMinor")?,
            xattrs,
        },
        digest: if e.digest.is_empty() {
            None
        } else {
            Some(parse_digest(&e.digest)?)
        },
        first_chunk: 0,
        chunk_count: 0,
    })
}

/// The chunks of one regular file, from its `reg` entry and following `chunk` entries.
fn file_chunks(
    parts: &[&TocEntry],
    size: u64,
    blob_size: u64,
    member_ends: Option<&Vec<u64>>,
) -> Result<Vec<Chunk>, String> {
    let first = parts[0];
    let mut chunks = Vec::with_capacity(parts.len());
    let mut expect_file_offset = 0u64;
    for (k, p) in parts.iter().enumerate() {
        let file_offset = u64::try_from(p.chunk_offset).map_err(|_| "negative chunkOffset".to_string())?;
        if file_offset != expect_file_offset {
            return Err(format!(
                "chunk {k} starts at {file_offset}, expected {expect_file_offset} (gap, overlap or disorder)"
            ));
        }
        let len = if p.chunk_size > 0 {
            p.chunk_size as u64
        } else {
            size - file_offset
        };
        let end = file_offset
            .checked_add(len)
            .filter(|e| *e <= size)
            .ok_or_else(|| format!("chunk {k} runs past the file size {size}"))?;
        let blob_offset = u64::try_from(p.offset).map_err(|_| "negative offset".to_string())?;
        let blob_end = match member_ends {
            None if k + 1 < parts.len() => {
                u64::try_from(parts[k + 1].offset).map_err(|_| "negative offset".to_string())?
            }
            None => u64::try_from(first.end_offset).map_err(|_| "negative endOffset".to_string())?,
            Some(ends) => {
                let i = ends.partition_point(|o| *o <= blob_offset);
                *ends
                    .get(i)
                    .ok_or_else(|| format!("chunk {k} at {blob_offset} is past the TOC"))?
            }
        };
        if blob_offset >= blob_end || blob_end > blob_size {
            return Err(format!(
                "chunk {k} blob range {blob_offset}..{blob_end} is empty or outside the {blob_size}-byte blob"
            ));
        }
        let digest_text = if !p.chunk_digest.is_empty() {
            &p.chunk_digest
        } else if parts.len() == 1 {
            &first.digest
        } else {
            return Err(format!("chunk {k} has no chunkDigest"));
        };
        chunks.push(Chunk {
            file_offset,
            len,
            blob_offset,
            blob_len: blob_end - blob_offset,
            inner_offset: u64::try_from(p.inner_offset).map_err(|_| "negative innerOffset".to_string())?,
            digest: parse_digest(digest_text)?,
            kind: if p.chunk_type == "zeros" {
                ChunkKind::Zeros
            } else {
                ChunkKind::Data
            },
        });
        expect_file_offset = end;
    }
    if expect_file_offset != size {
        return Err(format!("chunks cover {expect_file_offset} of {size} bytes"));
    }
    Ok(chunks)
}

fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let d: crate::digest::Digest = text.parse().map_err(|e: crate::digest::DigestError| e.to_string())?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(d.hex(), &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// RFC 3339 → (seconds, nanoseconds).
pub fn parse_time(t: &str) -> Result<(i64, u32), String> {
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("bad time {t:?}: {e}"))?;
    Ok((dt.unix_timestamp(), dt.nanosecond()))
}

/// (seconds, nanoseconds) → RFC 3339 in UTC, as Go's encoding/json writes times.
pub fn format_time(secs: i64, nanos: u32) -> Option<String> {
    let dt = time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .replace_nanosecond(nanos)
        .ok()?;
    dt.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn an_array_past_its_cap_fails_at_the_first_element_too_many() {
        #[derive(Deserialize)]
        struct Small {
            #[serde(deserialize_with = "capped::<_, 3, _>")]
            v: Vec<u32>,
        }
        assert_eq!(serde_json::from_str::<Small>(r#"{"v":[1,2,3]}"#).unwrap().v, [1, 2, 3]);
        // The fourth element fails it: the fifth, not even a number, is never parsed.
        let e = serde_json::from_str::<Small>(r#"{"v":[1,2,3,4,"x"]}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("more than 3 entries"), "{e}");
        // The TOC's own field carries the real cap; a broken rule is not called bad JSON.
        let toc = r#"{"version":1,"entries":[{"type":"dir","name":"a"}]}"#;
        assert_eq!(parse(toc.as_bytes()).unwrap().entries.len(), 1);
        let e = parse(br#"{"version":1,"entries":[{"type":7}]}"#).err().unwrap();
        assert!(e.starts_with("TOC: invalid type"), "{e}");
        let e = parse(br#"{"version":1,"entries":["#).err().unwrap();
        assert!(e.starts_with("TOC is not valid JSON"), "{e}");
    }

    fn reg(name: &str, size: i64, offset: i64, end: i64) -> TocEntry {
        TocEntry {
            kind: "reg".into(),
            name: name.into(),
            size,
            offset,
            end_offset: end,
            digest: D.into(),
            mode: 0o644,
            mod_time: Some("2023-11-14T22:13:20Z".into()),
            ..Default::default()
        }
    }

    fn chunk(name: &str, chunk_offset: i64, chunk_size: i64, offset: i64) -> TocEntry {
        TocEntry {
            kind: "chunk".into(),
            name: name.into(),
            chunk_offset,
            chunk_size,
            offset,
            chunk_digest: D.into(),
            ..Default::default()
        }
    }

    fn index(entries: Vec<TocEntry>) -> Result<LayerIndex, TocError> {
        to_index(
            "sha256:layer",
            &Toc {
                version: 1,
                entries,
                tar_split_digest: None,
            },
            1000,
            Dialect::ZstdChunked,
        )
    }

    #[test]
    fn single_and_multi_chunk_files() {
        let mut first = reg("./big", 30, 100, 400);
        first.chunk_size = 10;
        first.chunk_digest = D.into();
        let idx = index(vec![
            reg("small", 5, 10, 50),
            first,
            chunk("./big", 10, 10, 200),
            chunk("./big", 20, 10, 300),
        ])
        .unwrap();
        assert_eq!(idx.entries.len(), 2);
        assert_eq!(idx.entries[1].path.as_bytes(), b"big");
        let big = idx.chunks_of(&idx.entries[1]);
        let ranges: Vec<_> = big
            .iter()
            .map(|c| (c.file_offset, c.len, c.blob_offset, c.blob_len))
            .collect();
        assert_eq!(ranges, [(0, 10, 100, 100), (10, 10, 200, 100), (20, 10, 300, 100)]);
        assert_eq!(idx.entries[0].mtime_secs, 1_700_000_000);
    }

    #[test]
    fn bad_tocs_are_refused_naming_the_entry() {
        let mut gap = reg("f", 30, 100, 400);
        gap.chunk_size = 10;
        gap.chunk_digest = D.into();
        let cases: Vec<(Vec<TocEntry>, &str)> = vec![
            (vec![reg("f", 5, 10, 5000)], "outside"),
            (vec![reg("f", 5, 50, 10)], "empty"),
            (vec![reg("../x", 5, 10, 50)], ".."),
            (vec![gap.clone(), chunk("f", 15, 15, 200)], "gap"),
            (vec![gap.clone(), chunk("f", 10, 30, 200)], "past the file size"),
            (vec![gap, chunk("f", 10, 10, 200)], "cover"),
            (vec![chunk("f", 0, 1, 1)], "without its file"),
            (
                vec![TocEntry {
                    kind: "weird".into(),
                    name: "w".into(),
                    ..Default::default()
                }],
                "unknown entry type",
            ),
            (vec![reg("f", -1, 10, 50)], "negative"),
        ];
        for (entries, want) in cases {
            let e = index(entries).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("sha256:layer"), "{want}: {e}");
        }
    }

    #[test]
    fn times_round_trip() {
        for (s, n) in [(0i64, 0u32), (1_700_000_000, 5), (-5, 0)] {
            let text = format_time(s, n).unwrap();
            assert_eq!(parse_time(&text).unwrap(), (s, n), "{text}");
        }
    }
}
