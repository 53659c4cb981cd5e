//! A seekable index of an unchanged gzip layer: the layer's file table (a [`LayerIndex`] with
//! codec [`ChunkCodec::Deflate`]) plus the checkpoints its chunks are inflated from. Built by
//! streaming the layer once ([`build`]). Two parts, so that a mount fetches only what it uses:
//!
//! - the **table** ([`encode`] / [`decode`]): the checkpoints' positions and the file table;
//!   fetched whole when a mount starts, kept in the cache, untrusted when read back
//!   ([`decode`] checks everything a read relies on: bounds, order, caps);
//! - the **windows**: each checkpoint's 32 KiB window as its own zstd frame, one after the
//!   other; a window is read (a Range request, or the cache) only when a chunk of its
//!   checkpoint is, and checked against the sha256 the table gives ([`open_window`]).
//!
//! ```text
//! table:
//! offset  size      field
//! 0       8         magic "LAMGZI02"
//! 8       4         version (2)
//! 12      4         checkpoint count P
//! 16      32        layer digest (sha256, raw)
//! 48      8         layer blob size
//! 56      8         span
//! 64      32        windows blob digest (sha256, raw)
//! 96      8         windows blob size
//! 104     8         file table length I
//! 112     8         tar size (the uncompressed stream's length)
//! 120     P × 72    checkpoints: in_offset u64, out_offset u64, window_at u64 (in the windows
//!                   blob), window_zlen u32 (compressed), window_len u32, bits u8, pad [7],
//!                   window sha256 [32]
//! …       I         file table: the layer index's own on-disk form (`index::disk`)
//! ```
//!
//! A chunk names its checkpoint by `blob_offset` (the checkpoint's first byte) and is
//! `inner_offset` uncompressed bytes after it; its `blob_len` reaches the input that had
//! produced its last byte when the index was built. Every chunk keeps its sha256, so a
//! checkpoint or window that does not reproduce the bytes fails the read, never serves it.

use std::io::{self, Read};

use crate::digest::{Digest, HashingReader};
use crate::format::chunk::{check_limits, MAX_CHUNK_BYTES};
use crate::format::tar_walk::walk_tar;
use crate::format::zran::{Checkpoint, ZranReader, MAX_CHECKPOINTS, MAX_SPAN, MIN_SPAN, WINDOW_BYTES};
use crate::index::{disk, LayerIndex};
use crate::model::{ChunkCodec, ChunkKind, EntryKind};

/// `artifactType` of a gzip index artifact in the registry.
pub const GZIP_INDEX_ARTIFACT_TYPE: &str = "application/vnd.lamina.gzip-index.v1";
/// Media type of its table layer: the table, zstd-compressed.
pub const GZIP_INDEX_LAYER_MEDIA_TYPE: &str = "application/vnd.lamina.gzip-index.v1+zstd";
/// Media type of its windows layer (zstd frames, read by range).
pub const GZIP_INDEX_WINDOWS_MEDIA_TYPE: &str = "application/vnd.lamina.gzip-index.windows.v1";
/// Largest table accepted (uncompressed).
pub const MAX_INDEX_BYTES: u64 = 256 << 20;
/// Largest compressed window accepted.
pub const MAX_WINDOW_ZLEN: u32 = 64 << 10;

const MAGIC: &[u8; 8] = b"LAMGZI02";
const VERSION: u32 = 2;
const HEADER_BYTES: usize = 120;
const POINT_BYTES: usize = 72;
/// Most chunks that may start at one checkpoint (an honest span holds a few thousand at most:
/// a tar entry takes 512 bytes of output at least, a span at most 8 MiB and one block).
pub const MAX_CHUNKS_PER_CHECKPOINT: usize = 65_536;
/// Input past a chunk's recorded end that is fetched too (inflate may look ahead a little).
const END_SLACK: u64 = 64;
/// zstd level of the windows: built once, read by every mount (12: 4.9% of a 25 MB python
/// layer, against 5.2% at 3 and 4.6% at 19, which takes twice as long).
const WINDOW_LEVEL: i32 = 12;
/// zstd level of the table as pushed: higher levels need tens of MB of context.
pub const TABLE_LEVEL: i32 = 9;

/// The table as pushed: [`encode`]d, zstd-compressed.
pub fn compressed_table(gz: &GzipIndex) -> io::Result<Vec<u8>> {
    zstd::bulk::compress(&encode(gz), TABLE_LEVEL)
}

/// A checkpoint as the table gives it: where inflating resumes, and where its window is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// Blob offset of the first whole byte after the checkpoint.
    pub in_offset: u64,
    /// Bits of the byte before `in_offset` that belong to the next block (0–7).
    pub bits: u8,
    /// Uncompressed offset of the checkpoint.
    pub out_offset: u64,
    /// Offset of the window's zstd frame in the windows blob.
    pub window_at: u64,
    /// Length of that frame.
    pub window_zlen: u32,
    /// Length of the window (32 KiB, less near the stream's start).
    pub window_len: u32,
    /// sha256 of the window.
    pub window_sha256: [u8; 32],
}

impl Point {
    /// Blob offset of the first byte inflating from here reads.
    pub fn start_byte(&self) -> u64 {
        self.in_offset - u64::from(self.bits > 0)
    }

    /// The zran checkpoint, given its window.
    pub fn with_window(&self, window: Vec<u8>) -> Checkpoint {
        Checkpoint {
            in_offset: self.in_offset,
            bits: self.bits,
            out_offset: self.out_offset,
            window,
        }
    }
}

/// A gzip layer's checkpoints and file table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GzipIndex {
    /// The gzip layer's digest.
    pub layer: Digest,
    /// Its compressed size.
    pub blob_size: u64,
    /// Compressed bytes between checkpoints it was built with.
    pub span: u64,
    /// Digest of the windows blob.
    pub windows: Digest,
    /// Size of the windows blob.
    pub windows_size: u64,
    /// Length of the uncompressed tar stream (what containers/storage calls the diff size).
    pub tar_size: u64,
    /// Checkpoints in stream order (strictly increasing first bytes).
    pub points: Vec<Point>,
    /// The file table; every data chunk starts at a checkpoint's first byte.
    pub index: LayerIndex,
}

impl GzipIndex {
    /// Bytes of the table as stored (uncompressed).
    pub fn index_table_bytes(&self) -> u64 {
        encode(self).len() as u64
    }

    /// The position in `points` of the checkpoint whose first byte is `start_byte`.
    pub fn point_at(&self, start_byte: u64) -> Option<usize> {
        point_at(&self.points, start_byte)
    }
}

/// The position in `points` (stream order) of the checkpoint whose first byte is `start_byte`.
pub fn point_at(points: &[Point], start_byte: u64) -> Option<usize> {
    let i = points.partition_point(|p| p.start_byte() < start_byte);
    points.get(i).filter(|p| p.start_byte() == start_byte).map(|_| i)
}

/// The window of `point` from its zstd frame `frame`, checked against the table's sha256.
pub fn open_window(point: &Point, frame: &[u8]) -> Result<Vec<u8>, String> {
    let window = zstd::bulk::decompress(frame, WINDOW_BYTES).map_err(|e| format!("window: {e}"))?;
    if window.len() != point.window_len as usize || Digest::of(&window).bytes() != point.window_sha256 {
        return Err(format!(
            "the window of the checkpoint at byte {} does not match its sha256",
            point.in_offset
        ));
    }
    Ok(window)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Stream the gzip layer `blob` once and index it: checkpoints every `span` compressed bytes
/// and every file's pieces with their digests. The blob must be `layer` (digest and size) and
/// inflate to `diff_id`, else nothing is returned. The windows blob is written to `windows` as
/// the checkpoints pass (memory does not grow with the layer's size, only with its entries).
pub fn build<R: Read>(
    blob: R,
    layer: &Digest,
    diff_id: &Digest,
    span: u64,
    windows: &mut dyn io::Write,
) -> io::Result<GzipIndex> {
    // Per checkpoint: (offset in the windows blob, frame length, window length, sha256).
    let records = std::cell::RefCell::new(Vec::<(u64, u32, u32, [u8; 32])>::new());
    let windows_hash = std::cell::RefCell::new(crate::digest::Hasher::new());
    let mut windows_len = 0u64;
    let sink: crate::format::zran::WindowSink<'_> = Box::new(|window: &[u8]| {
        let frame = zstd::bulk::compress(window, WINDOW_LEVEL)?;
        windows.write_all(&frame)?;
        windows_hash.borrow_mut().update(&frame);
        records.borrow_mut().push((
            windows_len,
            frame.len() as u32,
            window.len() as u32,
            Digest::of(window).bytes(),
        ));
        windows_len += frame.len() as u64;
        Ok(())
    });
    let hashing = HashingReader::new(blob);
    let zran = ZranReader::with_sink(hashing, span.clamp(MIN_SPAN, MAX_SPAN), Some(sink))?;
    let uncompressed = HashingReader::new(zran);
    let mut index = LayerIndex {
        codec: ChunkCodec::Deflate,
        ..LayerIndex::default()
    };
    let mut none = |_: &[u8; 32], _: &[u8]| Ok(());
    let uncompressed = walk_tar(uncompressed, 0, &mut none, |entry, mut chunks, data_at| {
        if data_at == crate::format::tar_walk::SPARSE && !chunks.is_empty() {
            return Err(bad(format!("{}: a GNU sparse file cannot be indexed", entry.path)));
        }
        for c in &mut chunks {
            // Kept here for now: where the chunk is in the uncompressed stream.
            c.blob_offset = data_at + c.file_offset;
        }
        index.push_entry(entry, chunks);
        Ok(())
    })?;
    let (got_diff, tar_size, zran) = uncompressed.finish_with_inner();
    if got_diff != *diff_id {
        return Err(bad(format!(
            "layer {layer} inflates to {got_diff}, not its diff_id {diff_id}"
        )));
    }
    let (checkpoints, progress, hashing) = zran.into_parts()?;
    // Whatever follows the gzip member (nothing, in any layer seen so far) is part of the blob.
    let mut hashing = hashing;
    io::copy(&mut hashing, &mut io::sink())?;
    let (got_layer, blob_size) = hashing.finish();
    if got_layer != *layer {
        return Err(bad(format!("layer {layer}: the bytes read are {got_layer}")));
    }
    let input_end_for = |out: u64| {
        let i = progress.partition_point(|(o, _)| *o < out);
        progress.get(i).map(|(_, e)| *e).unwrap_or(blob_size)
    };
    for c in &mut index.chunks {
        if c.kind == ChunkKind::Zeros {
            c.blob_offset = 0;
            continue;
        }
        let at = c.blob_offset;
        let p = &checkpoints[checkpoints.partition_point(|p| p.out_offset <= at) - 1];
        c.inner_offset = at - p.out_offset;
        c.blob_offset = p.start_byte();
        let end = (input_end_for(at + c.len) + END_SLACK).min(blob_size);
        c.blob_len = end - c.blob_offset;
        check_limits(c).map_err(|e| {
            bad(format!(
                "layer {layer}: {e} (its deflate blocks are too long for random access; a smaller --span does not help)"
            ))
        })?;
    }
    let records = records.into_inner();
    if records.len() != checkpoints.len() {
        return Err(bad("a checkpoint without its window"));
    }
    let points = checkpoints
        .iter()
        .zip(records)
        .map(|(c, (window_at, window_zlen, window_len, window_sha256))| Point {
            in_offset: c.in_offset,
            bits: c.bits,
            out_offset: c.out_offset,
            window_at,
            window_zlen,
            window_len,
            window_sha256,
        })
        .collect::<Vec<_>>();
    let windows_size = points.last().map_or(0, |p| p.window_at + u64::from(p.window_zlen));
    Ok(GzipIndex {
        layer: layer.clone(),
        blob_size,
        span: span.clamp(MIN_SPAN, MAX_SPAN),
        windows: windows_hash.into_inner().finish(),
        windows_size,
        tar_size,
        points,
        index,
    })
}

/// Index the uncompressed tar layer `blob` by streaming it once: its file table only, each
/// chunk being the file's bytes where they are in the blob (codec [`ChunkCodec::Raw`]; no
/// checkpoints, no windows). The blob must be `layer`, whose diff_id is its own digest.
pub fn build_tar<R: Read>(blob: R, layer: &Digest) -> io::Result<GzipIndex> {
    let mut index = LayerIndex {
        codec: ChunkCodec::Raw,
        ..LayerIndex::default()
    };
    let mut none = |_: &[u8; 32], _: &[u8]| Ok(());
    let hashing = walk_tar(HashingReader::new(blob), 0, &mut none, |entry, mut chunks, data_at| {
        if data_at == crate::format::tar_walk::SPARSE && !chunks.is_empty() {
            return Err(bad(format!("{}: a GNU sparse file cannot be indexed", entry.path)));
        }
        for c in chunks.iter_mut().filter(|c| c.kind == ChunkKind::Data) {
            c.blob_offset = data_at + c.file_offset;
            c.blob_len = c.len;
        }
        for c in chunks.iter_mut().filter(|c| c.kind == ChunkKind::Zeros) {
            c.blob_offset = 0;
        }
        index.push_entry(entry, chunks);
        Ok(())
    })?;
    let (got, size) = hashing.finish();
    if got != *layer {
        return Err(bad(format!("layer {layer}: the bytes read are {got}")));
    }
    Ok(GzipIndex {
        layer: layer.clone(),
        blob_size: size,
        span: 0,
        windows: Digest::of(b""),
        windows_size: 0,
        tar_size: size,
        points: Vec::new(),
        index,
    })
}

/// The table as one file (see the module's table).
pub fn encode(gz: &GzipIndex) -> Vec<u8> {
    let table = disk::encode(&gz.index);
    let mut out = Vec::with_capacity(HEADER_BYTES + gz.points.len() * POINT_BYTES + table.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(gz.points.len() as u32).to_le_bytes());
    out.extend_from_slice(&gz.layer.bytes());
    out.extend_from_slice(&gz.blob_size.to_le_bytes());
    out.extend_from_slice(&gz.span.to_le_bytes());
    out.extend_from_slice(&gz.windows.bytes());
    out.extend_from_slice(&gz.windows_size.to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    out.extend_from_slice(&gz.tar_size.to_le_bytes());
    for p in &gz.points {
        out.extend_from_slice(&p.in_offset.to_le_bytes());
        out.extend_from_slice(&p.out_offset.to_le_bytes());
        out.extend_from_slice(&p.window_at.to_le_bytes());
        out.extend_from_slice(&p.window_zlen.to_le_bytes());
        out.extend_from_slice(&p.window_len.to_le_bytes());
        out.extend_from_slice(&[p.bits, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&p.window_sha256);
    }
    out.extend_from_slice(&table);
    out
}

/// Read and check a table for layer `layer` of `blob_size` bytes. Untrusted input: every
/// count, offset and length is checked before it is used, and against the layer.
pub fn decode(data: &[u8], layer: &Digest, blob_size: u64) -> Result<GzipIndex, String> {
    if data.len() as u64 > MAX_INDEX_BYTES {
        return Err(format!(
            "gzip index of {} bytes is over the {MAX_INDEX_BYTES}-byte cap",
            data.len()
        ));
    }
    let header = data.get(..HEADER_BYTES).ok_or("gzip index: too short")?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if &header[..8] != MAGIC || u32_at(8) != VERSION {
        return Err("not a lamina gzip index of version 2".into());
    }
    let count = u32_at(12) as usize;
    if count > MAX_CHECKPOINTS {
        return Err(format!(
            "gzip index: {count} checkpoints (1 to {MAX_CHECKPOINTS} accepted)"
        ));
    }
    if header[16..48] != layer.bytes() {
        return Err(format!("gzip index: made for another layer than {layer}"));
    }
    if u64_at(48) != blob_size {
        return Err(format!(
            "gzip index: made for a {}-byte layer, this one has {blob_size}",
            u64_at(48)
        ));
    }
    let span = u64_at(56);
    let windows = Digest::from_bytes(header[64..96].try_into().expect("32 bytes"));
    let (windows_size, table_len, tar_size) = (u64_at(96), u64_at(104), u64_at(112));
    let points_end = HEADER_BYTES + count * POINT_BYTES;
    if (points_end as u64).checked_add(table_len) != Some(data.len() as u64) {
        return Err("gzip index: section sizes do not add up to the file size".into());
    }
    let mut points: Vec<Point> = Vec::with_capacity(count);
    for i in 0..count {
        let r = &data[HEADER_BYTES + i * POINT_BYTES..HEADER_BYTES + (i + 1) * POINT_BYTES];
        let u64_of = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
        let u32_of = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().expect("4 bytes"));
        let point = Point {
            in_offset: u64_of(0),
            out_offset: u64_of(8),
            window_at: u64_of(16),
            window_zlen: u32_of(24),
            window_len: u32_of(28),
            bits: r[32],
            window_sha256: r[40..72].try_into().expect("32 bytes"),
        };
        let fail = |why: &str| format!("gzip index: checkpoint {i}: {why}");
        if point.bits > 7 || (point.bits > 0 && point.in_offset == 0) || point.in_offset > blob_size {
            return Err(fail("position outside the layer"));
        }
        if u64::from(point.window_len) != point.out_offset.min(WINDOW_BYTES as u64) {
            return Err(fail("window of the wrong length"));
        }
        if point.window_zlen > MAX_WINDOW_ZLEN
            || point
                .window_at
                .checked_add(u64::from(point.window_zlen))
                .is_none_or(|end| end > windows_size)
        {
            return Err(fail("window outside the windows blob"));
        }
        if let Some(prev) = points.last() {
            if point.start_byte() <= prev.start_byte() || point.out_offset < prev.out_offset {
                return Err(fail("out of order"));
            }
        } else if point.out_offset != 0 {
            return Err(fail("the first checkpoint is not the stream's start"));
        }
        points.push(point);
    }
    let index = disk::decode(&data[points_end..]).map_err(|e| format!("gzip index: {e}"))?;
    // A gzip layer's table has checkpoints (the first at the stream's start); an uncompressed
    // layer's has none.
    if (index.codec == ChunkCodec::Deflate) != (count > 0) {
        return Err("gzip index: checkpoints do not match the layer's kind".into());
    }
    let gz = GzipIndex {
        layer: layer.clone(),
        blob_size,
        span,
        windows,
        windows_size,
        tar_size,
        points,
        index,
    };
    check_table(&gz)?;
    Ok(gz)
}

/// The file table's invariants: codec, each file's chunks tiling it, each data chunk at a
/// checkpoint and inside the layer, under the chunk caps.
fn check_table(gz: &GzipIndex) -> Result<(), String> {
    let index = &gz.index;
    if index.codec != ChunkCodec::Deflate && index.codec != ChunkCodec::Raw {
        return Err("gzip index: the file table is not of a gzip or tar layer".into());
    }
    let raw = index.codec == ChunkCodec::Raw;
    let mut by_point: std::collections::HashMap<u64, Vec<(u64, u64)>> = std::collections::HashMap::new();
    for e in &index.entries {
        let fail = |why: String| format!("gzip index: {}: {why}", e.path);
        let start = e.first_chunk as usize;
        let chunks = start
            .checked_add(e.chunk_count as usize)
            .and_then(|end| index.chunks.get(start..end))
            .ok_or_else(|| fail("chunks out of range".into()))?;
        if e.kind != EntryKind::Regular {
            if !chunks.is_empty() {
                return Err(fail("chunks on an entry that is not a file".into()));
            }
            continue;
        }
        let mut expect = 0u64;
        for c in chunks {
            if c.file_offset != expect || c.len == 0 || c.len > MAX_CHUNK_BYTES {
                return Err(fail(format!(
                    "chunk at {} does not follow the one before",
                    c.file_offset
                )));
            }
            expect += c.len;
            if c.kind == ChunkKind::Zeros {
                continue;
            }
            check_limits(c).map_err(|err| fail(err.to_string()))?;
            if raw && (c.blob_len != c.len || c.inner_offset != 0) {
                return Err(fail(format!(
                    "chunk at {} is not the file's bytes as they are",
                    c.file_offset
                )));
            }
            if !raw && gz.point_at(c.blob_offset).is_none() {
                return Err(fail(format!("chunk at {} names no checkpoint", c.file_offset)));
            }
            if c.blob_offset
                .checked_add(c.blob_len)
                .is_none_or(|end| end > gz.blob_size)
            {
                return Err(fail(format!("chunk at {} reaches past the layer", c.file_offset)));
            }
        }
        if expect != e.size {
            return Err(fail(format!("chunks cover {expect} of {} bytes", e.size)));
        }
        for c in chunks.iter().filter(|c| c.kind == ChunkKind::Data) {
            by_point.entry(c.blob_offset).or_default().push((c.inner_offset, c.len));
        }
    }
    // A checkpoint's chunks are inflated in one pass: they must not overlap, and their number
    // is bounded (a read brings all of them).
    for (at, mut pieces) in by_point {
        if pieces.len() > MAX_CHUNKS_PER_CHECKPOINT {
            return Err(format!(
                "gzip index: {} chunks at the checkpoint at byte {at} (at most {MAX_CHUNKS_PER_CHECKPOINT})",
                pieces.len()
            ));
        }
        pieces.sort_unstable();
        if pieces.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(format!("gzip index: chunks of the checkpoint at byte {at} overlap"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::decode_chunk_from;
    use std::io::Write;

    type Files = Vec<(String, Vec<u8>)>;

    /// The second file of a checkpoint made to start inside the first.
    fn overlap_two_files(g: &mut GzipIndex) {
        let (i, j) = (0..g.index.chunks.len())
            .flat_map(|i| (0..g.index.chunks.len()).map(move |j| (i, j)))
            .find(|&(i, j)| {
                let (a, b) = (&g.index.chunks[i], &g.index.chunks[j]);
                i != j
                    && a.kind == ChunkKind::Data
                    && b.kind == ChunkKind::Data
                    && a.blob_offset == b.blob_offset
                    && a.inner_offset < b.inner_offset
            })
            .expect("two chunks at one checkpoint");
        g.index.chunks[j].inner_offset = g.index.chunks[i].inner_offset + 1;
    }
    type Damage = Box<dyn Fn(&mut GzipIndex)>;

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if i % 7 < 3 {
                    (s >> 56) as u8
                } else {
                    b'a' + (i % 23) as u8
                }
            })
            .collect()
    }

    /// A gzip layer: small files, one file of several pieces, a file of zeros, a link.
    fn layer() -> (Vec<u8>, Vec<u8>, Files) {
        let mut files = Vec::new();
        for i in 0..60 {
            files.push((format!("usr/lib/f{i}"), noise(i, 20_000 + (i as usize * 997))));
        }
        files.push((
            "usr/big".to_string(),
            noise(99, 3 * crate::format::tar_walk::PIECE_BYTES + 5),
        ));
        files.push(("usr/zeros".to_string(), vec![0u8; 2 << 20]));
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in &files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        b.append_link(&mut h, "usr/link", "big").unwrap();
        let tar = b.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        (tar, e.finish().unwrap(), files)
    }

    fn built() -> (Vec<u8>, GzipIndex, Files) {
        let (blob, gz, _, files) = built_with_windows();
        (blob, gz, files)
    }

    fn built_with_windows() -> (Vec<u8>, GzipIndex, Vec<u8>, Files) {
        let (tar, blob, files) = layer();
        let mut windows = Vec::new();
        let gz = build(
            blob.as_slice(),
            &Digest::of(&blob),
            &Digest::of(&tar),
            MIN_SPAN,
            &mut windows,
        )
        .unwrap();
        (blob, gz, windows, files)
    }

    /// Every checkpoint with its window, read from the windows blob.
    fn checkpoints(gz: &GzipIndex, windows: &[u8]) -> Vec<Checkpoint> {
        gz.points
            .iter()
            .map(|p| {
                let frame = &windows[p.window_at as usize..(p.window_at + u64::from(p.window_zlen)) as usize];
                p.with_window(open_window(p, frame).unwrap())
            })
            .collect()
    }

    /// Every file of `files` read back through `gz`'s chunks from `blob` equals its content.
    fn assert_files_read_back(gz: &GzipIndex, blob: &[u8], points: &[Checkpoint], files: &Files) {
        for (name, data) in files {
            let e = gz
                .index
                .entries
                .iter()
                .find(|e| e.path.as_bytes() == name.as_bytes())
                .unwrap();
            let mut got = Vec::new();
            for c in gz.index.chunks_of(e) {
                let raw = &blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize];
                decode_chunk_from(gz.index.codec, points, c, raw, &mut got).unwrap();
            }
            assert_eq!(&got, data, "{name}");
        }
    }

    #[test]
    fn every_file_reads_back_from_its_checkpoints() {
        let (blob, gz, windows, files) = built_with_windows();
        let points = checkpoints(&gz, &windows);
        assert_eq!(Digest::of(&windows), gz.windows);
        assert!(gz.points.len() > 4, "{} checkpoints", gz.points.len());
        assert_eq!(gz.index.entries.len(), files.len() + 1);
        assert_files_read_back(&gz, &blob, &points, &files);
        // A chunk needs only its own compressed range: far less than the layer.
        let big = gz
            .index
            .entries
            .iter()
            .find(|e| e.path.as_bytes() == b"usr/big")
            .unwrap();
        assert!(gz
            .index
            .chunks_of(big)
            .iter()
            .all(|c| c.blob_len < blob.len() as u64 / 2));
    }

    #[test]
    fn the_file_round_trips_and_is_checked_against_the_layer() {
        let (blob, gz, _) = built();
        let bytes = encode(&gz);
        let layer = Digest::of(&blob);
        assert_eq!(decode(&bytes, &layer, blob.len() as u64).unwrap(), gz);
        let other = Digest::of(b"other");
        assert!(decode(&bytes, &other, blob.len() as u64)
            .unwrap_err()
            .contains("another layer"));
        assert!(decode(&bytes, &layer, blob.len() as u64 + 1)
            .unwrap_err()
            .contains("-byte layer"));
    }

    #[test]
    fn damaged_files_are_refused_naming_the_problem() {
        let (blob, gz, _) = built();
        let layer = Digest::of(&blob);
        let size = blob.len() as u64;
        let bytes = encode(&gz);
        let cases: Vec<(Damage, &str)> = vec![
            (Box::new(|g| g.points.swap(1, 2)), "out of order"),
            (Box::new(|g| g.points[1].bits = 9), "outside the layer"),
            (Box::new(|g| g.points[2].window_len -= 1), "wrong length"),
            (
                Box::new(|g| g.points[2].window_at = g.windows_size),
                "outside the windows blob",
            ),
            (Box::new(|g| g.index.chunks[3].blob_offset += 1), "names no checkpoint"),
            (Box::new(|g| g.index.chunks[3].blob_len = u64::MAX - 5), "over the"),
            (Box::new(|g| g.index.chunks[3].len += 1), "cover"),
            (
                Box::new(|g| g.index.codec = ChunkCodec::Zstd),
                "checkpoints do not match",
            ),
            (
                Box::new(|g| {
                    g.index.codec = ChunkCodec::Zstd;
                    g.points.clear();
                }),
                "not of a gzip or tar layer",
            ),
            (Box::new(overlap_two_files), "overlap"),
        ];
        for (damage, expected) in cases {
            let mut g = gz.clone();
            damage(&mut g);
            let err = decode(&encode(&g), &layer, size).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        for cut in [0, 10, 79, 200, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], &layer, size).is_err());
        }
        let mut flipped = bytes.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        assert!(decode(&flipped, &layer, size).unwrap_err().contains("checksum"));
    }

    #[test]
    fn a_flipped_window_byte_fails_the_chunk_not_the_reader() {
        let (blob, gz, mut windows, _) = built_with_windows();
        let mut points = checkpoints(&gz, &windows);
        // The first data chunk that starts shortly after a checkpoint with a full window.
        let chunk = gz
            .index
            .chunks
            .iter()
            .find(|c| {
                c.kind == ChunkKind::Data
                    && c.inner_offset < 1024
                    && gz
                        .point_at(c.blob_offset)
                        .is_some_and(|i| points[i].window.len() == WINDOW_BYTES)
            })
            .cloned()
            .expect("a chunk right after a checkpoint");
        let raw = &blob[chunk.blob_offset as usize..(chunk.blob_offset + chunk.blob_len) as usize];
        let at = gz.point_at(chunk.blob_offset).unwrap();
        decode_chunk_from(ChunkCodec::Deflate, &points, &chunk, raw, &mut Vec::new()).unwrap();
        // A flipped byte in the windows blob: the window no longer matches its sha256.
        let p = &gz.points[at];
        windows[p.window_at as usize + p.window_zlen as usize / 2] ^= 0x10;
        let frame = &windows[p.window_at as usize..(p.window_at + u64::from(p.window_zlen)) as usize];
        assert!(open_window(p, frame).is_err());
        // A window that is wrong but got past that (a table made to match it): the output
        // refers back into it, so the chunk's sha256 no longer matches.
        for b in &mut points[at].window {
            *b = !*b;
        }
        let err = decode_chunk_from(ChunkCodec::Deflate, &points, &chunk, raw, &mut Vec::new()).unwrap_err();
        assert!(err.is_bad_bytes(), "{err}");
    }

    #[test]
    fn an_uncompressed_layer_is_indexed_in_place_without_checkpoints() {
        let (tar, _, files) = layer();
        let layer_digest = Digest::of(&tar);
        let gz = build_tar(tar.as_slice(), &layer_digest).unwrap();
        assert!(gz.points.is_empty() && gz.index.codec == ChunkCodec::Raw);
        assert_eq!(gz.tar_size, tar.len() as u64);
        assert_eq!(decode(&encode(&gz), &layer_digest, tar.len() as u64).unwrap(), gz);
        assert_files_read_back(&gz, &tar, &[], &files);
        // A chunk moved off the file's bytes fails its sha256, never serves them.
        let c = gz
            .index
            .chunks
            .iter()
            .find(|c| c.kind == ChunkKind::Data)
            .unwrap()
            .clone();
        let raw = &tar[c.blob_offset as usize + 1..(c.blob_offset + c.blob_len) as usize + 1];
        assert!(decode_chunk_from(ChunkCodec::Raw, &[], &c, raw, &mut Vec::new())
            .unwrap_err()
            .is_bad_bytes());
    }

    /// Hands out its bytes in pieces of varying sizes, as a network would.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = (self.1 * 7 + 3) % 5000 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_same_layer_gives_the_same_index_however_its_bytes_arrive() {
        let (tar, blob, _) = layer();
        let (layer, diff) = (Digest::of(&blob), Digest::of(&tar));
        let (mut w1, mut w2) = (Vec::new(), Vec::new());
        let whole = build(blob.as_slice(), &layer, &diff, MIN_SPAN, &mut w1).unwrap();
        let trickled = build(Trickle(&blob, 1), &layer, &diff, MIN_SPAN, &mut w2).unwrap();
        assert!(encode(&whole) == encode(&trickled) && w1 == w2);
    }

    #[test]
    fn a_layer_that_is_not_what_it_claims_is_not_indexed() {
        let (tar, blob, _) = layer();
        let err = build(
            blob.as_slice(),
            &Digest::of(b"x"),
            &Digest::of(&tar),
            MIN_SPAN,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("the bytes read are"), "{err}");
        let err = build(
            blob.as_slice(),
            &Digest::of(&blob),
            &Digest::of(b"x"),
            MIN_SPAN,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("diff_id"), "{err}");
    }
}
