//! Read-ahead in visiting order, for bulk readers (backup, copy, scan, `tar -c`): a reader that
//! reads the files of a directory one after the other in the order the directory lists them
//! is walking the tree, whatever order the layer blob keeps them in (a tar made from readdir
//! order is not sorted). Once [`RUN_TO_START`] files in a row were read in listing order, the
//! next files of the directory are fetched ahead, a window that doubles with every file that
//! keeps the run going, up to [`MAX_FILES`] files or [`MAX_BYTES`]. A reader that skips about
//! (a program importing some modules) never builds a run.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::{Chunk, ChunkKind, EntryKind};
use crate::union::live::LiveState;

/// Files read in listing order before anything is fetched ahead.
pub const RUN_TO_START: u32 = 3;
/// The most files fetched ahead at once.
pub const MAX_FILES: usize = 256;
/// The most compressed bytes fetched ahead at once.
pub const MAX_BYTES: u64 = 16 << 20;
/// Directories whose listing order is remembered (a walk is in one at a time; a few more
/// cover readers in parallel).
const MAX_DIRS: usize = 64;

/// One directory's walk.
struct DirWalk {
    /// Regular files of the directory, in listing order.
    files: Arc<Vec<u64>>,
    /// Position of each in `files`.
    position: Arc<HashMap<u64, usize>>,
    /// The position after the last file read.
    next: usize,
    /// Files read in listing order in a row.
    run: u32,
    /// Files fetched ahead up to this position.
    issued_to: usize,
}

/// Walk detection of a mount.
#[derive(Default)]
pub struct Walks {
    dirs: Mutex<HashMap<u64, DirWalk>>,
    /// Off (`--prefetch none`).
    pub(super) off: bool,
}

impl Walks {
    /// File `ino` (a regular file of directory `parent`) is read from its start: the chunks to
    /// fetch ahead, per layer, if a walk goes on.
    pub fn first_read(&self, st: &LiveState, parent: u64, ino: u64) -> Vec<(usize, Vec<Chunk>)> {
        if self.off {
            return Vec::new();
        }
        let mut dirs = self.dirs.lock();
        if !dirs.contains_key(&parent) {
            if dirs.len() >= MAX_DIRS {
                dirs.clear();
            }
            let Some(dir) = st.union.get(parent) else {
                return Vec::new();
            };
            let files: Vec<u64> = dir
                .children
                .values()
                .copied()
                .filter(|c| st.union.get(*c).is_some_and(|n| n.kind == EntryKind::Regular))
                .collect();
            let position = files.iter().enumerate().map(|(i, f)| (*f, i)).collect();
            dirs.insert(
                parent,
                DirWalk {
                    files: Arc::new(files),
                    position: Arc::new(position),
                    next: 0,
                    run: 0,
                    issued_to: 0,
                },
            );
        }
        let w = dirs.get_mut(&parent).expect("inserted above");
        let Some(&at) = w.position.get(&ino) else {
            return Vec::new();
        };
        // The next file, or one further on inside what was fetched ahead (the reader skipped
        // some): the walk goes on.
        let continues = w.run > 0 && at >= w.next && (at == w.next || at < w.issued_to);
        if continues {
            w.run += 1;
        } else {
            w.run = 1;
            w.issued_to = at + 1;
        }
        w.next = at + 1;
        if w.run < RUN_TO_START {
            return Vec::new();
        }
        let window = (1usize << (w.run - RUN_TO_START + 2).min(8)).min(MAX_FILES);
        let from = w.issued_to.max(at + 1);
        let to = (at + 1 + window).min(w.files.len());
        // Topped up half a window at a time (or up to the directory's end), not a file per
        // file read: one small request per file is what a walk must not cost.
        if from >= to || (to - from < window / 2 && to < w.files.len()) {
            return Vec::new();
        }
        let mut per_layer: HashMap<usize, Vec<Chunk>> = HashMap::new();
        let mut bytes = 0u64;
        let mut reached = from;
        for &f in &w.files[from..to] {
            let Some((layer, entry)) = st.union.get(f).and_then(|n| n.source) else {
                reached += 1;
                continue;
            };
            let index = &st.layers[layer];
            let chunks = index.chunks_of(&index.entries[entry]);
            bytes += chunks.iter().map(|c| c.blob_len).sum::<u64>();
            per_layer
                .entry(layer)
                .or_default()
                .extend(chunks.iter().filter(|c| c.kind == ChunkKind::Data).cloned());
            reached += 1;
            if bytes >= MAX_BYTES {
                break;
            }
        }
        w.issued_to = reached;
        per_layer
            .into_iter()
            .map(|(layer, mut chunks)| {
                chunks.sort_by_key(|c| c.blob_offset);
                (layer, chunks)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::LayerPath;
    use crate::index::{IndexEntry, LayerIndex};
    use crate::model::Meta;
    use crate::union::live::LiveUnion;

    /// One directory `d` of ten one-chunk files, stored in the blob in reverse name order.
    fn live() -> LiveUnion {
        let mut ix = LayerIndex::default();
        ix.push_entry(
            IndexEntry::new(
                LayerPath::normalize(b"d").unwrap(),
                Meta::new(EntryKind::Directory, 0o755),
                None,
            ),
            Vec::new(),
        );
        for i in (0..10u8).rev() {
            let mut meta = Meta::new(EntryKind::Regular, 0o644);
            meta.size = 10;
            let chunk = Chunk {
                file_offset: 0,
                len: 10,
                blob_offset: (9 - i as u64) * 100,
                blob_len: 100,
                inner_offset: 0,
                digest: [i + 1; 32],
                kind: ChunkKind::Data,
            };
            let path = LayerPath::normalize(format!("d/f{i}").as_bytes()).unwrap();
            ix.push_entry(IndexEntry::new(path, meta, None), vec![chunk]);
        }
        LiveUnion::new(vec![ix], &[false], std::time::Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn a_walk_in_listing_order_fetches_ahead_and_a_scattered_reader_does_not() {
        let live = live();
        let (dir, files) = live.read(|st| {
            let d = st.union.node(crate::union::ROOT_INO).children[&b"d"[..]];
            (d, st.union.node(d).children.values().copied().collect::<Vec<_>>())
        });
        let walks = Walks::default();
        let read = |i: usize| live.read(|st| walks.first_read(st, dir, files[i]));
        assert!(read(0).is_empty());
        assert!(read(1).is_empty());
        // The third file in a row: the next four files are fetched ahead.
        let ahead = read(2);
        assert_eq!(ahead.len(), 1);
        let digests: Vec<u8> = ahead[0].1.iter().map(|c| c.digest[0]).collect();
        assert_eq!(digests, vec![7, 6, 5, 4], "f6..f3 in blob order (f6 sits first)");
        // Reading into what was fetched ahead fetches further, never the same again.
        let more = read(3);
        let digests: Vec<u8> = more[0].1.iter().map(|c| c.digest[0]).collect();
        assert_eq!(digests, vec![10, 9, 8], "f7..f9, the rest of the directory");
        // Scattered reads elsewhere never build a run.
        let walks = Walks::default();
        for i in [5, 1, 8, 3, 9, 0] {
            assert!(
                live.read(|st| walks.first_read(st, dir, files[i])).is_empty(),
                "read {i}"
            );
        }
    }
}
