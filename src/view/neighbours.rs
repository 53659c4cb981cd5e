//! Neighbours: a read that misses a small file and reaches its end also fetches, in the same
//! Range request, the files that follow it in the blob inside the same directory, up to
//! [`NEIGHBOUR_BYTES`] compressed. A program importing a package's modules one after another
//! (python, node, ruby) otherwise waits one round trip per module, and a layer written in
//! tar order keeps the files of one directory together. Only the needed chunks are waited
//! for: the neighbours arrive behind them, on the same request, at no round trip.
//!
//! ```text
//! blob ──[ yaml/__init__.py ][ yaml/composer.py ][ yaml/constructor.py ]...──[ zipfile.py ]──
//!        └ read (a miss) ───┘└──────── neighbours, ≤ NEIGHBOUR_BYTES ───────┘  not in yaml/
//! ```

use crate::fetch::runs::MERGE_GAP_BYTES;
use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkCodec, ChunkKind, EntryKind};

/// Compressed bytes fetched after a missed small file (a package's next modules): 10 ms of a
/// 100 Mbit/s link. Measured on the suite's python start: 64 KiB cut its requests from 117 to
/// 75, 128 KiB to 68, and both were faster at 20 Mbit/s too.
pub const NEIGHBOUR_BYTES: u64 = 128 << 10;
/// Files larger than this get read-ahead within the file instead.
pub const SMALL_FILE_BYTES: u64 = 256 << 10;
/// Entries looked at after the file (directories and links between files cost nothing).
const MAX_ENTRIES: usize = 256;

/// The data chunks of the regular files after entry `entry` of `index` that lie in the same
/// directory (or below it) and whose compressed bytes follow on from the file's with gaps of
/// at most [`MERGE_GAP_BYTES`], up to [`NEIGHBOUR_BYTES`], stopping at the first chunk that
/// `missing` says is not missing (here already, or on its way). Empty for codecs whose
/// chunks are not independent pieces of the blob.
pub fn after(index: &LayerIndex, entry: usize, missing: impl Fn(&Chunk) -> bool) -> Vec<Chunk> {
    if !matches!(index.codec, ChunkCodec::Zstd | ChunkCodec::Gzip | ChunkCodec::Raw) {
        return Vec::new();
    }
    let Some(e) = index.entries.get(entry) else {
        return Vec::new();
    };
    let Some((dir, _)) = e.path.split_last() else {
        return Vec::new();
    };
    let Some(mut end) = index.chunks_of(e).iter().map(|c| c.blob_offset + c.blob_len).max() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for n in index.entries.iter().skip(entry + 1).take(MAX_ENTRIES) {
        if !n.path.starts_with(&dir) {
            break;
        }
        if n.kind != EntryKind::Regular {
            continue;
        }
        for c in index.chunks_of(n).iter().filter(|c| c.kind == ChunkKind::Data) {
            if c.blob_offset < end || c.blob_offset > end + MERGE_GAP_BYTES || !missing(c) {
                return out;
            }
            bytes += c.blob_len;
            if bytes > NEIGHBOUR_BYTES {
                return out;
            }
            end = c.blob_offset + c.blob_len;
            out.push(c.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::LayerPath;
    use crate::index::IndexEntry;
    use crate::model::Meta;

    /// A layer of `(path, compressed length)` files, written one after another.
    fn layer(files: &[(&str, u64)]) -> LayerIndex {
        let mut index = LayerIndex::default();
        let mut at = 0;
        for (i, (path, len)) in files.iter().enumerate() {
            let path = LayerPath::normalize(path.as_bytes()).unwrap();
            if *len == 0 {
                index.push_entry(
                    IndexEntry::new(path, Meta::new(EntryKind::Directory, 0o755), None),
                    Vec::new(),
                );
                continue;
            }
            let chunk = Chunk {
                file_offset: 0,
                len: len * 3,
                blob_offset: at,
                blob_len: *len,
                inner_offset: 0,
                digest: [i as u8; 32],
                kind: ChunkKind::Data,
            };
            at += len + 100;
            let mut meta = Meta::new(EntryKind::Regular, 0o644);
            meta.size = len * 3;
            index.push_entry(IndexEntry::new(path, meta, Some([i as u8; 32])), vec![chunk]);
        }
        index
    }

    fn names(index: &LayerIndex, got: &[Chunk]) -> Vec<String> {
        got.iter()
            .map(|c| {
                let e = index.entries.iter().find(|e| index.chunks_of(e).contains(c)).unwrap();
                e.path.to_string()
            })
            .collect()
    }

    #[test]
    fn the_files_after_a_small_file_in_its_directory_up_to_the_budget() {
        let kib = 1 << 10;
        let index = layer(&[
            ("yaml", 0),
            ("yaml/__init__.py", 4 * kib),
            ("yaml/composer.py", 20 * kib),
            ("yaml/sub", 0),
            ("yaml/sub/x.py", 10 * kib),
            ("yaml/tokens.py", 30 * kib),
            ("yaml/zzz.py", 120 * kib),
            ("zipfile.py", 5 * kib),
        ]);
        let got = after(&index, 1, |_| true);
        // Below the directory counts; the budget stops it before zzz.py (20 + 10 + 30 KiB, then 180).
        assert_eq!(
            names(&index, &got),
            ["/yaml/composer.py", "/yaml/sub/x.py", "/yaml/tokens.py"]
        );
        // The directory's end stops it, not the budget.
        let got = after(&index, 6, |_| true);
        assert!(got.is_empty(), "{:?}", names(&index, &got));
        // A chunk already here (or on its way) stops it: the rest would be a request of its own.
        let got = after(&index, 1, |c| c.digest != [4; 32]);
        assert_eq!(names(&index, &got), ["/yaml/composer.py"]);
        // A gap larger than a merge gap stops it: the bytes would not come in the same request.
        let mut gapped = index.clone();
        gapped.chunks[1].blob_offset += MERGE_GAP_BYTES + 200 * kib;
        assert!(after(&gapped, 1, |_| true).is_empty());
        // Codecs whose chunks are not pieces of the blob: nothing.
        let mut deflate = index.clone();
        deflate.codec = ChunkCodec::Deflate;
        assert!(after(&deflate, 1, |_| true).is_empty());
        // An index out of range: nothing, no panic.
        assert!(after(&index, 99, |_| true).is_empty());
    }
}
