//! Reading a file's bytes: which chunks a read needs (plus read-ahead when it starts a
//! request), fetching the missing ones, copying out of the chunk store; assembled copies of
//! multi-chunk files; the local file a passthrough open can use.

use fuser::INodeNo;

use super::neighbours::{self, SMALL_FILE_BYTES};
use super::{ImageView, OpError};
use crate::fetch::prefetch::Class;
use crate::model::{Chunk, ChunkCodec, ChunkKind, EntryKind};

/// Chunks past the end of a read fetched along with it (in the same merged request): a file
/// being read is usually read on, and one round trip more costs more than the bytes.
const READAHEAD_BYTES: u64 = 1 << 20;
// A missed small file is fetched whole, so its neighbours follow its last chunk.
const _: () = assert!(SMALL_FILE_BYTES <= READAHEAD_BYTES);

/// What a read needs of a file, copied out of the union's lock.
struct FilePlan {
    layer: usize,
    size: u64,
    /// The whole file's digest, when it is assembled from several chunks.
    assembled: Option<[u8; 32]>,
    /// Chunks from the first one the read needs to the last one it may read ahead into, then
    /// the neighbours of a small file (all in blob order).
    chunks: Vec<Chunk>,
    /// How many of `chunks` the read itself needs.
    needed: usize,
    /// Every chunk of the file, when the read reaches its end and it is assembled.
    all_chunks: Option<Vec<Chunk>>,
    /// Chunks of the layer to fetch ahead, in blob order (the read goes on in blob order).
    ahead: Vec<Chunk>,
    /// Chunks of the next files of the directory, per layer (the reader walks the tree).
    walk_ahead: Vec<(usize, Vec<Chunk>)>,
}

impl ImageView {
    /// A local file holding exactly the bytes of file `ino`, if there is one: the chunk of a
    /// one-chunk file, or the assembled copy of a larger one.
    pub fn local_copy(&self, ino: INodeNo) -> Option<std::path::PathBuf> {
        let store = self.fetcher.store();
        let path = self.live.read(|st| {
            let n = st.union.get(ino.0)?;
            let (layer, entry) = n.source?;
            let index = &st.layers[layer];
            let e = &index.entries[entry];
            match index.chunks_of(e) {
                [one] if one.kind == crate::model::ChunkKind::Data => Some(store.path(&one.digest)),
                [_, _, ..] => e.digest.map(|d| store.assembled_path(&d)),
                _ => None,
            }
        })?;
        path.exists().then_some(path)
    }

    /// What reading `offset..offset+size` of file `ino` needs; None: nothing to read.
    fn plan(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Option<FilePlan>, OpError> {
        self.live.read(|st| {
            let n = st.union.get(ino.0).ok_or(OpError::NotFound)?;
            let Some((layer, entry)) = n.source else {
                return if n.kind == EntryKind::Regular {
                    Ok(None)
                } else {
                    Err(OpError::Invalid)
                };
            };
            let end = (offset + size as u64).min(n.size);
            if offset >= end {
                return Ok(None);
            }
            let index = &st.layers[layer];
            let e = &index.entries[entry];
            let chunks = index.chunks_of(e);
            let first = chunks.partition_point(|c| c.file_offset + c.len <= offset);
            let needed = chunks.partition_point(|c| c.file_offset < end);
            // Read ahead only when this read starts a request of its own: otherwise the
            // chunks are already there or on their way, and waiting for them is all there is.
            let misses = chunks[first..needed].iter().any(|c| self.fetcher.is_missing(c));
            let wanted = if misses {
                chunks.partition_point(|c| c.file_offset < end.saturating_add(READAHEAD_BYTES))
            } else {
                needed
            };
            // A miss on a small file (which `wanted` takes whole): the files after it in its
            // directory come in the same request (a program importing a package's modules).
            let neighbours = if misses && n.size <= SMALL_FILE_BYTES && !self.walks.off {
                neighbours::after(index, entry, |c| self.fetcher.is_missing(c))
            } else {
                Vec::new()
            };
            let assembled = e.digest.filter(|_| e.chunk_count > 1);
            if first < needed {
                self.recorder.read(layer, entry, first as u32, (needed - 1) as u32);
            }
            let mut ahead = Vec::new();
            if index.codec != ChunkCodec::Stream && first < needed {
                let start = chunks[first].blob_offset;
                let end = chunks[first..needed]
                    .iter()
                    .map(|c| c.blob_offset + c.blob_len)
                    .max()
                    .unwrap_or(start);
                if let Some((from, to)) = self.readahead.advance(layer, start, end) {
                    ahead = self.readahead.chunks_in(layer, index, from, to);
                }
            }
            let walk_ahead = if offset == 0 {
                self.walks.first_read(st, n.parent, ino.0)
            } else {
                Vec::new()
            };
            Ok(Some(FilePlan {
                layer,
                size: n.size,
                assembled,
                chunks: chunks[first..wanted].iter().cloned().chain(neighbours).collect(),
                needed: needed - first,
                all_chunks: (assembled.is_some() && end == n.size).then(|| chunks.to_vec()),
                ahead,
                walk_ahead,
            }))
        })
    }

    /// File `ino` was opened with passthrough: its reads will not reach lamina, so it counts
    /// as read from start to end for read-ahead in blob order and in visiting order, and what
    /// that calls for is fetched ahead, as a read of it would.
    /// Only a file's first such open counts: later ones (a library mapped by every process)
    /// are not part of a walk.
    pub(super) fn passed_through(&self, ino: INodeNo) {
        if !self.passed.lock().insert(ino.0) {
            return;
        }
        let (ahead, walk_ahead) = self.live.read(|st| {
            let Some(n) = st.union.get(ino.0) else {
                return (None, Vec::new());
            };
            let Some((layer, entry)) = n.source else {
                return (None, Vec::new());
            };
            let index = &st.layers[layer];
            let data = || {
                index
                    .chunks_of(&index.entries[entry])
                    .iter()
                    .filter(|c| c.kind == ChunkKind::Data)
            };
            let start = data().map(|c| c.blob_offset).min();
            let end = data().map(|c| c.blob_offset + c.blob_len).max();
            let ahead = match (start, end) {
                (Some(start), Some(end)) if index.codec != ChunkCodec::Stream => self
                    .readahead
                    .advance(layer, start, end)
                    .map(|(from, to)| (layer, self.readahead.chunks_in(layer, index, from, to))),
                _ => None,
            };
            (ahead, self.walks.first_read(st, n.parent, ino.0))
        });
        for (layer, chunks) in ahead.into_iter().chain(walk_ahead) {
            self.fetcher.prefetch(&self.sources[layer], chunks, Class::Readahead);
        }
    }

    /// The bytes of a file range, fetching missing chunks.
    pub fn read(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, OpError> {
        let Some(mut plan) = self.plan(ino, offset, size)? else {
            return Ok(Vec::new());
        };
        let end = (offset + size as u64).min(plan.size);
        let data = self.read_chunks(&mut plan, offset, end)?;
        if let (Some(file_digest), Some(chunks)) = (plan.assembled, plan.all_chunks) {
            // The file has been read to its end: if every chunk is here, keep one copy of it
            // whole, so later reads (this mount's and the next) are one pread. In the
            // background, when a core is free: the read that finished the file does not wait.
            self.assembler.request(file_digest, chunks);
        }
        Ok(data)
    }

    /// The bytes `offset..end` of a file from its chunks, fetching missing ones.
    fn read_chunks(&self, plan: &mut FilePlan, offset: u64, end: u64) -> Result<Vec<u8>, OpError> {
        let layer = plan.layer;
        let mut out = vec![0u8; (end - offset) as usize];
        self.fetcher
            .prefetch(&self.sources[layer], std::mem::take(&mut plan.ahead), Class::Readahead);
        for (l, chunks) in std::mem::take(&mut plan.walk_ahead) {
            self.fetcher.prefetch(&self.sources[l], chunks, Class::Readahead);
        }
        self.fetcher
            .ensure_all(&self.sources[layer], &plan.chunks, plan.needed)
            .map_err(OpError::Fetch)?;
        // Chunks of zeros are never fetched: `out` starts zeroed.
        for c in plan.chunks[..plan.needed].iter().filter(|c| c.kind == ChunkKind::Data) {
            let from = offset.max(c.file_offset);
            let to = end.min(c.file_offset + c.len);
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            let store = self.fetcher.store();
            let got = match store.read_at(&c.digest, from - c.file_offset, dst) {
                // Evicted since it was checked (another process collected the cache): fetch again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.fetcher.ensure(&self.sources[layer], c).map_err(OpError::Fetch)?;
                    store.read_at(&c.digest, from - c.file_offset, dst)
                }
                r => r,
            }
            .map_err(OpError::Io)?;
            if got != dst.len() {
                return Err(OpError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cached chunk is short",
                )));
            }
        }
        Ok(out)
    }

    /// Serve a read from the assembled copy of a multi-chunk file, if there is one, through a
    /// per-thread buffer (no allocation or zeroing per read): `send(reply, bytes)`. Gives the
    /// reply back if there is no such copy.
    pub fn read_assembled<R>(
        &self,
        ino: INodeNo,
        offset: u64,
        size: u32,
        reply: R,
        send: impl FnOnce(R, &[u8]),
    ) -> Option<R> {
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let found = self.live.read(|st| {
            let n = st.union.get(ino.0)?;
            let (layer, entry) = n.source?;
            let e = &st.layers[layer].entries[entry];
            e.digest.filter(|_| e.chunk_count > 1).map(|d| (d, n.size))
        });
        let Some((digest, file_size)) = found else {
            return Some(reply);
        };
        let end = (offset + size as u64).min(file_size);
        if offset >= end {
            return Some(reply);
        }
        let len = (end - offset) as usize;
        BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < len {
                b.resize(len, 0);
            }
            match self.fetcher.store().read_assembled(&digest, offset, &mut b[..len]) {
                Ok(Some(got)) if got == len => {
                    send(reply, &b[..len]);
                    None
                }
                _ => Some(reply),
            }
        })
    }
}
