//! Turning a profile into prefetch batches: each file it lists is looked up by layer and path
//! in the mount's layer indexes (names that do not exist, entries that are not regular files,
//! and chunk ranges out of bounds are skipped), its recorded chunks taken, and the files
//! grouped in first-access order into batches of about [`BATCH_BYTES`], each batch's chunks
//! per layer in blob order (so neighbouring files become one request).

use std::collections::{HashMap, HashSet};

use super::Profile;
use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkKind, EntryKind};

/// Compressed bytes per batch: a few requests' worth, so the first files arrive first.
pub const BATCH_BYTES: u64 = 2 << 20;
/// File bytes fetched past a recorded range: the kernel reads ahead of a reader up to its
/// read-ahead window (lamina asks for 1 MiB), and not always the same way twice.
pub const AFTER_BYTES: u64 = 1 << 20;
/// File bytes fetched before a recorded range: a page fault of a mapped file reads around it.
pub const BEFORE_BYTES: u64 = 256 << 10;

/// Chunks of one layer to prefetch together, in blob order.
#[derive(Debug)]
pub struct Batch {
    /// Index of the layer in the mount (bottom = 0).
    pub layer: usize,
    /// Its chunks, in blob order.
    pub chunks: Vec<Chunk>,
}

/// The prefetch batches of `profile` over the mount's layers (`digests[i]` is layer `i`'s
/// blob digest, `indexes[i]` its index).
pub fn batches(profile: &Profile, digests: &[String], indexes: &[&LayerIndex]) -> Vec<Batch> {
    let layer_of: HashMap<&str, usize> = digests.iter().enumerate().map(|(i, d)| (d.as_str(), i)).collect();
    let mut by_path: Vec<Option<HashMap<&[u8], usize>>> = (0..indexes.len()).map(|_| None).collect();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut out = Vec::new();
    let mut pending: Vec<Vec<Chunk>> = vec![Vec::new(); indexes.len()];
    let mut pending_bytes = 0u64;
    for f in &profile.files {
        let Some(&layer) = layer_of.get(f.layer.as_str()) else {
            continue;
        };
        let index = indexes[layer];
        let paths = by_path[layer].get_or_insert_with(|| {
            index
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_bytes(), i))
                .collect()
        });
        let Some(&entry) = paths.get(f.path.as_bytes()) else {
            continue;
        };
        let e = &index.entries[entry];
        if e.kind != EntryKind::Regular {
            continue;
        }
        let chunks = index.chunks_of(e);
        let ranges = f.chunks.clone().unwrap_or_else(|| vec![(0, u32::MAX)]);
        for (a, b) in ranges {
            let (a, b) = (a as usize, (b as usize).min(chunks.len().saturating_sub(1)));
            if a >= chunks.len() || a > b {
                continue;
            }
            // What the kernel may read around the recorded reads this time.
            let from = chunks[a].file_offset.saturating_sub(BEFORE_BYTES);
            let to = (chunks[b].file_offset + chunks[b].len).saturating_add(AFTER_BYTES);
            let a = chunks.partition_point(|c| c.file_offset + c.len <= from);
            let b = chunks.partition_point(|c| c.file_offset < to);
            for c in &chunks[a..b] {
                if c.kind == ChunkKind::Data && seen.insert(c.digest) {
                    pending_bytes += c.blob_len;
                    pending[layer].push(c.clone());
                }
            }
        }
        if pending_bytes >= BATCH_BYTES {
            flush(&mut pending, &mut out);
            pending_bytes = 0;
        }
    }
    flush(&mut pending, &mut out);
    out
}

fn flush(pending: &mut [Vec<Chunk>], out: &mut Vec<Batch>) {
    for (layer, chunks) in pending.iter_mut().enumerate() {
        if chunks.is_empty() {
            continue;
        }
        let mut chunks = std::mem::take(chunks);
        chunks.sort_by_key(|c| c.blob_offset);
        out.push(Batch { layer, chunks });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::LayerPath;
    use crate::digest::Digest;
    use crate::index::IndexEntry;
    use crate::model::Meta;
    use crate::profile::FileAccess;

    fn index() -> LayerIndex {
        let mut ix = LayerIndex::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            // Five chunks of 4 MiB: a recorded range grows by one chunk before and after.
            let chunks = (0..5)
                .map(|k| Chunk {
                    file_offset: k * (4 << 20),
                    len: 4 << 20,
                    blob_offset: (i as u64 * 5 + k) * 100,
                    blob_len: 100,
                    inner_offset: 0,
                    digest: [(i * 5 + k as usize + 1) as u8; 32],
                    kind: ChunkKind::Data,
                })
                .collect();
            let mut meta = Meta::new(EntryKind::Regular, 0o644);
            meta.size = 20 << 20;
            ix.push_entry(
                IndexEntry::new(LayerPath::normalize(name.as_bytes()).unwrap(), meta, None),
                chunks,
            );
        }
        let dir = IndexEntry::new(
            LayerPath::normalize(b"d").unwrap(),
            Meta::new(EntryKind::Directory, 0o755),
            None,
        );
        ix.push_entry(dir, Vec::new());
        ix
    }

    #[test]
    fn unknown_names_and_bad_ranges_are_skipped() {
        let ix = index();
        let mut p = Profile::new(&Digest::of(b"i"));
        let f = |layer: &str, path: &str, chunks: Option<Vec<(u32, u32)>>| FileAccess {
            layer: layer.into(),
            path: path.into(),
            t_ms: 0,
            chunks,
        };
        p.files = vec![
            f("sha256:l", "c", Some(vec![(1, 1)])),
            f("sha256:l", "nope", None),
            f("sha256:other", "a", None),
            f("sha256:l", "d", None),
            f("sha256:l", "a", Some(vec![(2, 99), (7, 9), (1, 0)])),
            f("sha256:l", "b", None),
        ];
        let b = batches(&p, &["sha256:l".into()], &[&ix]);
        assert_eq!(b.len(), 1);
        let offsets: Vec<u64> = b[0].chunks.iter().map(|c| c.blob_offset).collect();
        // a: chunk 2 to the end (clipped), grown by one before; all of b; c: chunk 1 grown by
        // one each side. In blob order.
        assert_eq!(
            offsets,
            vec![100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200]
        );
    }
}
