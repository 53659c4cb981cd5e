//! Read-ahead in blob order, per layer: when the reads of a layer go on in the order of the
//! layer's blob (one large file read front to back, or a bulk reader walking a tree whose
//! files sit in the blob in the order it visits them), the chunks after the last read are
//! fetched before they are asked for, in a window that doubles with every read that stays on
//! the stream, up to [`MAX_WINDOW_BYTES`]. A read elsewhere in the layer starts over with
//! nothing fetched ahead, so scattered readers (a program importing modules) cost no bytes.
//!
//! ```text
//! blob ─────[ read ]─────────[ fetched ahead ............ )──────────
//!                   next_blob                            issued_to = next_blob + window
//! ```

use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkKind};

/// The first window past a read that continues the previous one.
const FIRST_WINDOW_BYTES: u64 = 256 << 10;
/// The largest window: 2.7 s of a 100 Mbit/s link, 8 requests of the fetcher's largest size.
pub const MAX_WINDOW_BYTES: u64 = 32 << 20;
/// How far a read may start from where the stream is and still count as on it (the metadata
/// frames between two files, a reader skipping a small file it does not need).
const SLACK_BYTES: u64 = 64 << 10;

/// One layer's stream of reads.
#[derive(Default)]
struct Stream {
    /// Where the last read on the stream ended (compressed blob offset).
    next_blob: u64,
    /// Fetched ahead up to here.
    issued_to: u64,
    /// The window now; 0 before the first read.
    window: u64,
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
    /// this read continues the layer's stream.
    pub fn advance(&self, layer: usize, start: u64, end: u64) -> Option<(u64, u64)> {
        let mut st = self.streams.get(layer)?.lock();
        let on_stream = st.window > 0
            && start + SLACK_BYTES >= st.next_blob
            && start <= st.issued_to.max(st.next_blob) + SLACK_BYTES;
        if !on_stream {
            *st = Stream {
                next_blob: end,
                issued_to: end,
                window: FIRST_WINDOW_BYTES,
            };
            return None;
        }
        if end > st.next_blob {
            st.window = (st.window * 2).min(MAX_WINDOW_BYTES);
            st.next_blob = end;
        }
        let target = st.next_blob + st.window;
        if target <= st.issued_to {
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
    fn windows_grow_on_the_stream_and_start_over_off_it() {
        let r = Readahead::new(1);
        let kib = 1 << 10;
        // The first read only arms the stream.
        assert_eq!(r.advance(0, 0, 100 * kib), None);
        // It goes on: 512 KiB ahead, then 1 MiB, ...
        assert_eq!(
            r.advance(0, 100 * kib, 200 * kib),
            Some((200 * kib, 200 * kib + 512 * kib))
        );
        assert_eq!(
            r.advance(0, 200 * kib, 300 * kib),
            Some((712 * kib, 300 * kib + 1024 * kib))
        );
        // A read inside what was fetched ahead is still on the stream.
        assert!(r.advance(0, 800 * kib, 900 * kib).is_some());
        // Far away: start over, nothing ahead.
        assert_eq!(r.advance(0, 100 << 20, (100 << 20) + 10), None);
        // The window never passes the cap.
        let mut at = 100 << 20;
        let mut last = None;
        for _ in 0..40 {
            last = r.advance(0, at, at + 128 * kib).or(last);
            at += 128 * kib;
        }
        let (from, to) = last.unwrap();
        assert!(to - at <= MAX_WINDOW_BYTES && to > from, "{from} {to} {at}");
    }
}
