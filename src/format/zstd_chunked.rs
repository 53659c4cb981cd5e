//! zstd:chunked: where the TOC is (layer annotations, else the footer at the blob's end, in
//! both dialects found in the wild), and decoding it.
//!
//! ```text
//! blob: [frames of headers and file chunks …][skippable: TOC][skippable: tar-split][skippable: footer]
//! current footer payload (64 B): tocOffset tocLen tocUncompressedLen type=1
//!                                tarSplitOffset tarSplitLen tarSplitUncompressedLen  "GNUlInUx"
//! older footer payload   (40 B): tocOffset tocLen tocUncompressedLen type=1           "GnUlInUx"
//! (all u64 little endian; each payload sits in a skippable frame: 50 2A 4D 18, u32 LE length)
//! ```

use std::collections::HashMap;
use std::io::Read;

use super::toc::{Toc, MAX_TOC_BYTES};
use crate::digest::Digest;

/// Current dialect: TOC position annotation.
pub const MANIFEST_POSITION_KEY: &str = "io.github.containers.zstd-chunked.manifest-position";
/// Current dialect: sha256 of the compressed TOC.
pub const MANIFEST_CHECKSUM_KEY: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// Current dialect: tar-split position.
pub const TARSPLIT_POSITION_KEY: &str = "io.github.containers.zstd-chunked.tarsplit-position";
/// Older dialect: TOC position annotation.
pub const OLD_MANIFEST_POSITION_KEY: &str = "io.containers.zstd-chunked.manifest-position";
/// Older dialect: sha256 of the compressed TOC.
pub const OLD_MANIFEST_CHECKSUM_KEY: &str = "io.containers.zstd-chunked.manifest-checksum";
/// Magic closing the current footer.
pub const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
/// Magic closing the older footer.
pub const OLD_FOOTER_MAGIC: &[u8; 8] = b"GnUlInUx";
/// Current footer payload size.
pub const FOOTER_BYTES: usize = 64;
/// Older footer payload size.
pub const OLD_FOOTER_BYTES: usize = 40;
/// Skippable frame magic (first of the 16 values; lamina writes this one).
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// The only TOC type defined.
const MANIFEST_TYPE_CRFS: u64 = 1;

/// Which zstd:chunked dialect a layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZstdDialect {
    /// `io.github.containers.*`, 64-byte footer, tar-split.
    Current,
    /// `io.containers.*`, 40-byte footer, no tar-split.
    Older,
}

/// Where a TOC is and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocLocation {
    /// Dialect.
    pub dialect: ZstdDialect,
    /// Offset of the compressed TOC in the blob.
    pub offset: u64,
    /// Compressed length.
    pub compressed_len: u64,
    /// Uncompressed (JSON) length.
    pub uncompressed_len: u64,
    /// sha256 of the compressed TOC, from the annotation (footers carry none).
    pub checksum: Option<Digest>,
}

/// The TOC location from layer annotations (current dialect first). `Ok(None)`: no annotation.
pub fn location_from_annotations(annotations: &HashMap<String, String>) -> Result<Option<TocLocation>, String> {
    for (dialect, pos_key, sum_key) in [
        (ZstdDialect::Current, MANIFEST_POSITION_KEY, MANIFEST_CHECKSUM_KEY),
        (ZstdDialect::Older, OLD_MANIFEST_POSITION_KEY, OLD_MANIFEST_CHECKSUM_KEY),
    ] {
        let Some(pos) = annotations.get(pos_key) else { continue };
        let fields: Vec<u64> = pos
            .split(':')
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("annotation {pos_key}={pos:?} is not offset:length:uncompressed:type"))?;
        let [offset, compressed_len, uncompressed_len, kind] = fields[..] else {
            return Err(format!(
                "annotation {pos_key}={pos:?} is not offset:length:uncompressed:type"
            ));
        };
        if kind != MANIFEST_TYPE_CRFS {
            return Err(format!("annotation {pos_key}: unknown TOC type {kind}"));
        }
        let checksum = match annotations.get(sum_key) {
            Some(s) => Some(s.parse().map_err(|e| format!("annotation {sum_key}: {e}"))?),
            None => None,
        };
        return Ok(Some(TocLocation {
            dialect,
            offset,
            compressed_len,
            uncompressed_len,
            checksum,
        }));
    }
    Ok(None)
}

/// The TOC location from the last bytes of a blob, if they end with either footer.
pub fn location_from_footer(tail: &[u8]) -> Option<TocLocation> {
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    for (dialect, size, magic) in [
        (ZstdDialect::Current, FOOTER_BYTES, FOOTER_MAGIC),
        (ZstdDialect::Older, OLD_FOOTER_BYTES, OLD_FOOTER_MAGIC),
    ] {
        if tail.len() < size || &tail[tail.len() - 8..] != magic {
            continue;
        }
        let f = &tail[tail.len() - size..];
        if u64_at(f, 3) != MANIFEST_TYPE_CRFS {
            return None;
        }
        return Some(TocLocation {
            dialect,
            offset: u64_at(f, 0),
            compressed_len: u64_at(f, 1),
            uncompressed_len: u64_at(f, 2),
            checksum: None,
        });
    }
    None
}

/// Check a location against the blob's size and the caps, before anything is fetched.
pub fn check_location(loc: &TocLocation, blob_size: u64) -> Result<(), String> {
    if loc.compressed_len == 0 || loc.compressed_len > MAX_TOC_BYTES || loc.uncompressed_len > MAX_TOC_BYTES {
        return Err(format!(
            "TOC of {} bytes ({} uncompressed) is empty or over the {MAX_TOC_BYTES}-byte cap",
            loc.compressed_len, loc.uncompressed_len
        ));
    }
    match loc.offset.checked_add(loc.compressed_len) {
        Some(end) if end <= blob_size => Ok(()),
        _ => Err(format!(
            "TOC at {}+{} lies outside the {blob_size}-byte blob",
            loc.offset, loc.compressed_len
        )),
    }
}

/// Verify and decode a compressed TOC.
pub fn decode_toc(compressed: &[u8], loc: &TocLocation) -> Result<Toc, String> {
    if let Some(expected) = &loc.checksum {
        let actual = Digest::of(compressed);
        if &actual != expected {
            return Err(format!(
                "TOC checksum mismatch: annotation says {expected}, bytes are {actual}"
            ));
        }
    }
    let json = decompress_exact(compressed, loc.uncompressed_len)?;
    super::toc::parse(&json)
}

/// zstd-decompress exactly `len` bytes, never allocating more than `len` (+1 to detect excess).
pub fn decompress_exact(compressed: &[u8], len: u64) -> Result<Vec<u8>, String> {
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::with_capacity(len.min(MAX_TOC_BYTES) as usize);
    decoder
        .take(len + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() as u64 != len {
        return Err(format!("decompressed to {} bytes, expected {len}", out.len()));
    }
    Ok(out)
}

/// A skippable frame holding `payload`.
pub fn skippable_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&SKIPPABLE_MAGIC);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// The current dialect's 64-byte footer payload.
pub fn footer(toc: (u64, u64, u64), tar_split: (u64, u64, u64)) -> [u8; FOOTER_BYTES] {
    let mut f = [0u8; FOOTER_BYTES];
    let words = [
        toc.0,
        toc.1,
        toc.2,
        MANIFEST_TYPE_CRFS,
        tar_split.0,
        tar_split.1,
        tar_split.2,
    ];
    for (i, w) in words.iter().enumerate() {
        f[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    f[56..].copy_from_slice(FOOTER_MAGIC);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_both_dialects() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let old: HashMap<String, String> = [
            (
                OLD_MANIFEST_POSITION_KEY.to_string(),
                "51717462:578245:3063197:1".to_string(),
            ),
            (OLD_MANIFEST_CHECKSUM_KEY.to_string(), d.to_string()),
        ]
        .into();
        let loc = location_from_annotations(&old).unwrap().unwrap();
        assert_eq!(
            (loc.dialect, loc.offset, loc.compressed_len),
            (ZstdDialect::Older, 51717462, 578245)
        );
        let bad: HashMap<String, String> = [(MANIFEST_POSITION_KEY.to_string(), "1:2:3".to_string())].into();
        assert!(location_from_annotations(&bad).is_err());
        let bad: HashMap<String, String> = [(MANIFEST_POSITION_KEY.to_string(), "1:2:3:7".to_string())].into();
        assert!(location_from_annotations(&bad).is_err());
        assert_eq!(location_from_annotations(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn footers_both_dialects() {
        let f = footer((100, 20, 300), (120, 5, 50));
        let mut tail = vec![9u8; 30];
        tail.extend_from_slice(&skippable_frame(&f));
        let loc = location_from_footer(&tail).unwrap();
        assert_eq!(
            (loc.dialect, loc.offset, loc.compressed_len, loc.uncompressed_len),
            (ZstdDialect::Current, 100, 20, 300)
        );
        let mut old = Vec::new();
        for w in [7u64, 8, 9, 1] {
            old.extend_from_slice(&w.to_le_bytes());
        }
        old.extend_from_slice(OLD_FOOTER_MAGIC);
        let loc = location_from_footer(&old).unwrap();
        assert_eq!((loc.dialect, loc.offset), (ZstdDialect::Older, 7));
        assert_eq!(location_from_footer(b"short"), None);
        assert!(check_location(&loc, 10).is_err());
    }

    #[test]
    fn toc_checksum_and_size_are_enforced() {
        let json = br#"{"version":1,"entries":[]}"#;
        let z = zstd::bulk::compress(json, 3).unwrap();
        let mut loc = TocLocation {
            dialect: ZstdDialect::Current,
            offset: 0,
            compressed_len: z.len() as u64,
            uncompressed_len: json.len() as u64,
            checksum: Some(Digest::of(&z)),
        };
        assert_eq!(decode_toc(&z, &loc).unwrap().version, 1);
        loc.uncompressed_len -= 1;
        assert!(decode_toc(&z, &loc).unwrap_err().contains("expected"));
        loc.uncompressed_len += 1;
        loc.checksum = Some(Digest::of(b"other"));
        assert!(decode_toc(&z, &loc).unwrap_err().contains("checksum mismatch"));
    }
}
