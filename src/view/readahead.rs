//! Read-ahead in blob order, per layer: when the reads of a layer go on in the order of the
//! layer's blob and read nearly every byte they pass (one large file read front to back, or a
//! bulk reader walking a tree whose files sit in the blob in the order it visits them), the
//! chunks after the last read are fetched before they are asked for, in a window that
//! doubles with every read that stays on the stream, up to [`MAX_WINDOW_BYTES`], and is
//! topped up when half of it has been read (so requests stay large). Readers that
//! skip much of what they pass (a program importing some modules of a directory) get no
//! window: the stream must have read at least [`DENSE_PERCENT`] of the blob bytes it spans
//! (the tar headers between files count as read), over at least [`PROVEN_BYTES`] or
//! [`PROVEN_READS`] reads. A read elsewhere in the layer starts a new stream. Files
//! opened with passthrough (their bytes local already) count as read: their reads never
//! reach lamina, and a walk over files fetched ahead must not look like a reader skipping.
//!
//! ```text
//! blob ───[start ...... read ......]───────[ fetched ahead ............ )──────────
//!                                   next_blob                          issued_to = next_blob + window
//! ```

use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkKind};

/// The first window once a stream has proven itself.
const FIRST_WINDOW_BYTES: u64 = 256 << 10;
/// The largest window: 2.7 s of a 100 Mbit/s link, 8 requests of the fetcher's largest size.
pub const MAX_WINDOW_BYTES: u64 = 32 << 20;
/// How far a read may start from where the stream is and still count as on it (the metadata
/// frames between two files, a small file the reader does not need).
const SLACK_BYTES: u64 = 64 << 10;
/// Blob bytes a stream must span before anything is fetched ahead for it.
pub const PROVEN_BYTES: u64 = 128 << 10;
/// Share of the bytes it spans that a stream must have read to get a window.
pub const DENSE_PERCENT: u64 = 90;
/// Reads on a stream that prove it as well as [`PROVEN_BYTES`] do (a walk over small files),
/// once they have read [`PROVEN_READ_BYTES`].
pub const PROVEN_READS: u32 = 4;
/// Bytes the reads of [`PROVEN_READS`] must have read: a few adjacent small modules do not.
pub const PROVEN_READ_BYTES: u64 = 32 << 10;
/// How far behind the furthest read a read may start and still be on the stream.
const BEHIND_BYTES: u64 = 1 << 20;
/// A gap this small between two reads counts as read: the tar header between two files.
const HEADER_GAP_BYTES: u64 = 2 << 10;

/// One layer's stream of reads.
#[derive(Default)]
struct Stream {
    /// Where the stream started (compressed blob offset).
    start: u64,
    /// Where the furthest read on the stream ended.
    next_blob: u64,
    /// Blob bytes the stream's reads covered.
    read_bytes: u64,
    /// Fetched ahead up to here.
    issued_to: u64,
    /// The window now (0: nothing ahead).
    window: u64,
    /// Whether any read happened yet.
    started: bool,
    /// Reads that added to the stream.
    reads: u32,
}

/// Read-ahead state of every layer of a mount.
pub struct Readahead {
    streams: Vec<Mutex<Stream>>,
    /// Per layer: its chunk indices in blob order, when the index does not keep them so.
    order: Vec<OnceLock<Option<Vec<u32>>>>,
}

impl Readahead {
    /// State for `layers` layers.
    pub fn new(layers: usize) -> Readahead {
        Readahead {
            streams: (0..layers).map(|_| Mutex::default()).collect(),
            order: (0..layers).map(|_| OnceLock::new()).collect(),
        }
    }

    /// A read of `layer` needs its blob bytes `start..end`: the blob range to fetch ahead, if
    /// this read continues a dense stream of reads.
    pub fn advance(&self, layer: usize, start: u64, end: u64) -> Option<(u64, u64)> {
        let mut st = self.streams.get(layer)?.lock();
        // Reads of a stream arrive out of order (several FUSE threads, the kernel's own
        // read-ahead): one a little behind the furthest is on it; further back, another reader.
        let behind = start + BEHIND_BYTES >= st.next_blob && start + SLACK_BYTES >= st.start;
        let on_stream = st.started && behind && start <= st.issued_to.max(st.next_blob) + SLACK_BYTES;
        if !on_stream {
            *st = Stream {
                start,
                next_blob: end,
                read_bytes: end - start,
                issued_to: end,
                window: 0,
                started: true,
                reads: 1,
            };
            return None;
        }
        if end <= st.next_blob {
            // Nothing new read: nothing more to fetch ahead.
            return None;
        }
        let gap = start.saturating_sub(st.next_blob);
        st.read_bytes += end - start.max(st.next_blob) + if gap <= HEADER_GAP_BYTES { gap } else { 0 };
        st.next_blob = end;
        st.reads = st.reads.saturating_add(1);
        let span = st.next_blob - st.start;
        let proven = span >= PROVEN_BYTES || (st.reads >= PROVEN_READS && st.read_bytes >= PROVEN_READ_BYTES);
        if !proven || st.read_bytes * 100 < span * DENSE_PERCENT {
            st.window = 0;
            return None;
        }
        st.window = (st.window * 2).clamp(FIRST_WINDOW_BYTES, MAX_WINDOW_BYTES);
        let target = st.next_blob + st.window;
        // Topped up half a window at a time, not by each read's few bytes: a bulk reader of
        // small files made hundreds of small requests (each costing the registry as much as
        // a large one).
        if target < st.issued_to + st.window / 2 {
            return None;
        }
        let from = st.issued_to.max(st.next_blob);
        st.issued_to = target;
        Some((from, target))
    }

    /// The data chunks of `index` (layer `layer`) whose compressed bytes start in `from..to`,
    /// in blob order.
    pub fn chunks_in(&self, layer: usize, index: &LayerIndex, from: u64, to: u64) -> Vec<Chunk> {
        let order = self.order[layer].get_or_init(|| {
            let sorted = index.chunks.windows(2).all(|w| w[0].blob_offset <= w[1].blob_offset);
            (!sorted).then(|| {
                let mut o: Vec<u32> = (0..index.chunks.len() as u32).collect();
                o.sort_by_key(|&i| index.chunks[i as usize].blob_offset);
                o
            })
        });
        let at = |i: usize| -> &Chunk {
            match order {
                Some(o) => &index.chunks[o[i] as usize],
                None => &index.chunks[i],
            }
        };
        let n = index.chunks.len();
        let first = partition_point(n, |i| at(i).blob_offset < from);
        (first..n)
            .map(at)
            .take_while(|c| c.blob_offset < to)
            .filter(|c| c.kind == ChunkKind::Data)
            .cloned()
            .collect()
    }
}

/// The first `i` in `0..n` for which `below(i)` is false (`below` true then false).
fn partition_point(n: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_streams_get_growing_windows_and_sparse_ones_none() {
        let r = Readahead::new(1);
        let kib = 1 << 10;
        // Front to back: nothing ahead until the stream spans PROVEN_BYTES, then 256 KiB, 512 KiB, ...
        assert_eq!(r.advance(0, 0, 64 * kib), None);
        assert_eq!(r.advance(0, 64 * kib, 128 * kib), Some((128 * kib, 384 * kib)));
        assert_eq!(r.advance(0, 128 * kib, 192 * kib), Some((384 * kib, 704 * kib)));
        // A read inside what was fetched ahead is still on the stream; reading nothing new
        // fetches nothing more.
        assert_eq!(r.advance(0, 128 * kib, 192 * kib), None);
        // Far away: a new stream, nothing ahead.
        assert_eq!(r.advance(0, 100 << 20, (100 << 20) + 10), None);
        // The window never passes the cap.
        let mut at = 100 << 20;
        let mut last = None;
        for _ in 0..60 {
            last = r.advance(0, at, at + 128 * kib).or(last);
            at += 128 * kib;
        }
        let (from, to) = last.unwrap();
        assert!(to - at <= MAX_WINDOW_BYTES && to > from, "{from} {to} {at}");
        // A reader taking 10 KiB of every 40 KiB (some modules of a directory): never a window.
        let r = Readahead::new(1);
        for i in 0..100u64 {
            assert_eq!(r.advance(0, i * 40 * kib, i * 40 * kib + 10 * kib), None, "read {i}");
        }
    }
}
