//! The zstd:chunked writer: re-encodes a layer's tar stream so every file payload (and every
//! chunk of a large file) is its own zstd frame, then appends the TOC, the tar-split and the
//! footer as skippable frames (current dialect). The uncompressed stream stays byte-identical
//! to the input, so the config's diff_id does not change — checked on every write.
//!
//! ```text
//! [frame: headers][frame: chunk][frame: chunk]…[frame: padding+headers]…[frame: end blocks]
//! [skippable: TOC][skippable: tar-split][skippable: footer]
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};

use base64::Engine as _;

use super::tar_scan::{Scanned, ScannedEntry, TarScanner, BLOCK};
use super::toc::{format_time, Toc, TocEntry};
use super::zstd_chunked::{self as zc, skippable_frame};
use crate::digest::{Digest, Hasher, HashingReader};

// Chunking and compression defaults, chosen by `cargo bench --bench convert` (figures in
// ARCHITECTURE.md). Against the demo image's 204 MB layer and two real Debian package upgrades:
// - avg 32 KiB: finds 18% of a libc6 upgrade already present (64 KiB: 9%, 16 KiB: 28%) for
//   +1.2% blob size and +26% TOC against 64 KiB; 16 KiB would cost +2.8% size and +81% TOC.
//   Neighbouring chunks are fetched in one merged request, so smaller chunks do not add
//   round trips, only TOC bytes.
// - files up to 4 × avg stay one chunk: most files in images are small, and one frame per
//   file is one request per file.
// - zstd level 6: within 1% of the gzip layer's size at ~90 MB/s per core (level 3: +3.5%
//   at ~150 MB/s; level 10: equal to gzip at ~63 MB/s).
/// Content-defined chunking: smallest chunk.
pub const DEFAULT_MIN_CHUNK: usize = 8 << 10;
/// Average chunk.
pub const DEFAULT_AVG_CHUNK: usize = 32 << 10;
/// Largest chunk.
pub const DEFAULT_MAX_CHUNK: usize = 128 << 10;
/// Smallest average chunk size accepted from the command line.
pub const MIN_AVG_CHUNK: usize = 4 << 10;
/// Largest average chunk size accepted from the command line.
pub const MAX_AVG_CHUNK: usize = 4 << 20;
/// Files up to this size are one chunk (one frame, one request).
pub const DEFAULT_SINGLE_CHUNK_MAX: u64 = 128 << 10;
/// zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 6;
/// Header bytes buffered between two payloads before they are written as a frame of their own.
const MAX_PENDING_META_BYTES: usize = 4 << 20;

/// Chunking and compression settings.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Content-defined chunking: smallest chunk.
    pub min_chunk: usize,
    /// Average chunk.
    pub avg_chunk: usize,
    /// Largest chunk.
    pub max_chunk: usize,
    /// Files up to this size are not chunked.
    pub single_chunk_max: u64,
    /// zstd compression level.
    pub level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            min_chunk: DEFAULT_MIN_CHUNK,
            avg_chunk: DEFAULT_AVG_CHUNK,
            max_chunk: DEFAULT_MAX_CHUNK,
            single_chunk_max: DEFAULT_SINGLE_CHUNK_MAX,
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// What a conversion produced.
#[derive(Clone, Debug)]
pub struct WrittenLayer {
    /// Digest of the zstd:chunked blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// sha256 of the uncompressed tar (unchanged from the input).
    pub diff_id: Digest,
    /// Layer annotations to put on the descriptor.
    pub annotations: HashMap<String, String>,
    /// TOC entries written (files, chunks, others).
    pub toc_entries: usize,
    /// Chunks written.
    pub chunks: usize,
    /// Compressed TOC bytes.
    pub toc_bytes: u64,
}

struct Out<W> {
    inner: W,
    pos: u64,
    hasher: Hasher,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.hasher.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }
}

/// tar-split (vbatts/tar-split JSON lines): segments of raw bytes and file records.
struct TarSplit {
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    position: u64,
    uncompressed: u64,
}

impl TarSplit {
    fn line(&mut self, value: serde_json::Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(&value).map_err(io::Error::other)?;
        line.push(b'\n');
        self.encoder.write_all(&line)?;
        self.uncompressed += line.len() as u64;
        self.position += 1;
        Ok(())
    }

    fn segment(&mut self, raw: &[u8]) -> io::Result<()> {
        let payload = base64::engine::general_purpose::STANDARD.encode(raw);
        self.line(serde_json::json!({"type": 2, "payload": payload, "position": self.position}))
    }

    fn file(&mut self, name: &[u8], size: u64, crc: Option<u64>) -> io::Result<()> {
        let payload = crc.map(|c| base64::engine::general_purpose::STANDARD.encode(c.to_be_bytes()));
        let mut v = serde_json::json!({"type": 1, "payload": payload, "position": self.position});
        match std::str::from_utf8(name) {
            Ok(n) => v["name"] = n.into(),
            Err(_) => v["name_raw"] = base64::engine::general_purpose::STANDARD.encode(name).into(),
        }
        if size > 0 {
            v["size"] = size.into();
        }
        self.line(v)
    }
}

const CRC64_GO_ISO: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);

/// Convert the uncompressed layer tar read from `input` into zstd:chunked on `output`.
pub fn write_zstd_chunked<R: Read, W: Write>(input: R, output: W, options: &WriterOptions) -> io::Result<WrittenLayer> {
    let mut scanner = TarScanner::new(HashingReader::new(input));
    let mut out = Out {
        inner: output,
        pos: 0,
        hasher: Hasher::new(),
    };
    let mut compressor = zstd::bulk::Compressor::new(options.level)?;
    let mut split = TarSplit {
        encoder: zstd::stream::write::Encoder::new(Vec::new(), options.level)?,
        position: 0,
        uncompressed: 0,
    };
    let mut toc = Toc {
        version: 1,
        ..Default::default()
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk_count = 0;
    loop {
        match scanner.next_entry()? {
            Scanned::End(raw) => {
                split.segment(&raw)?;
                pending.extend_from_slice(&raw);
                flush_frame(&mut out, &mut compressor, &mut pending)?;
                break;
            }
            Scanned::Entry(entry) => {
                split.segment(&entry.raw)?;
                pending.extend_from_slice(&entry.raw);
                // Headers of many entries without data (directories, empty files) in a row:
                // one frame per few MiB keeps memory bounded; frames simply follow each other.
                if pending.len() > MAX_PENDING_META_BYTES {
                    flush_frame(&mut out, &mut compressor, &mut pending)?;
                }
                let mut toc_entry = toc_entry_for(&entry)?;
                let mut crc = None;
                if is_regular(entry.typeflag) && entry.size > 0 {
                    flush_frame(&mut out, &mut compressor, &mut pending)?;
                    let mut digest = CRC64_GO_ISO.digest();
                    let written =
                        write_payload(&mut out, &mut compressor, scanner.input(), &entry, options, &mut digest)?;
                    crc = Some(digest.finalize());
                    chunk_count += written.0.len();
                    add_chunks(&mut toc.entries, toc_entry, written, out.pos);
                    toc_entry = TocEntry::default();
                } else if entry.size > 0 {
                    // A payload on a non-file entry (rare): keep it with the headers.
                    let start = pending.len();
                    scanner.input().take(entry.size).read_to_end(&mut pending)?;
                    if (pending.len() - start) as u64 != entry.size {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated tar payload"));
                    }
                }
                split.file(&entry.name, entry.size, crc)?;
                if !toc_entry.kind.is_empty() {
                    toc.entries.push(toc_entry);
                }
                let padding = (BLOCK as u64 - entry.size % BLOCK as u64) % BLOCK as u64;
                let start = pending.len();
                scanner.input().take(padding).read_to_end(&mut pending)?;
                if (pending.len() - start) as u64 != padding {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated tar padding"));
                }
                // The padding is part of the stream: tar-split keeps it as raw bytes, so the
                // tar can be rebuilt byte for byte from tar-split and the files.
                if padding > 0 {
                    split.segment(&pending[start..])?;
                }
            }
        }
    }
    let (diff_id, _) = scanner.into_inner().finish();
    finish(out, split, toc, diff_id, chunk_count)
}

fn is_regular(typeflag: u8) -> bool {
    matches!(typeflag, b'0' | 0 | b'7')
}

/// Compress the buffered header bytes into one frame.
fn flush_frame<W: Write>(
    out: &mut Out<W>,
    compressor: &mut zstd::bulk::Compressor<'_>,
    pending: &mut Vec<u8>,
) -> io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let frame = compressor.compress(pending)?;
    out.put(&frame)?;
    pending.clear();
    Ok(())
}

/// One written chunk: (file offset, length, blob offset, digest, all zeros).
struct WrittenChunk {
    file_offset: u64,
    len: u64,
    blob_offset: u64,
    digest: Digest,
    zeros: bool,
}

/// Write a file's payload as one frame per chunk; returns the chunks and the file digest.
fn write_payload<W: Write, R: Read>(
    out: &mut Out<W>,
    compressor: &mut zstd::bulk::Compressor<'_>,
    input: &mut R,
    entry: &ScannedEntry,
    options: &WriterOptions,
    crc: &mut crc::Digest<'_, u64>,
) -> io::Result<(Vec<WrittenChunk>, Digest)> {
    let mut file_hash = Hasher::new();
    let mut chunks = Vec::new();
    let mut emit = |data: &[u8], file_offset: u64, out: &mut Out<W>| -> io::Result<()> {
        file_hash.update(data);
        crc.update(data);
        let blob_offset = out.pos;
        out.put(&compressor.compress(data)?)?;
        chunks.push(WrittenChunk {
            file_offset,
            len: data.len() as u64,
            blob_offset,
            digest: Digest::of(data),
            zeros: data.iter().all(|b| *b == 0),
        });
        Ok(())
    };
    let mut body = input.take(entry.size);
    if entry.size <= options.single_chunk_max {
        let mut data = Vec::with_capacity(entry.size as usize);
        body.read_to_end(&mut data)?;
        if data.len() as u64 != entry.size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated file in tar"));
        }
        emit(&data, 0, out)?;
    } else {
        let cdc = fastcdc::v2020::StreamCDC::new(&mut body, options.min_chunk, options.avg_chunk, options.max_chunk);
        let mut seen = 0u64;
        for chunk in cdc {
            let chunk = chunk.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("chunker: {e}")))?;
            emit(&chunk.data, chunk.offset, out)?;
            seen += chunk.length as u64;
        }
        if seen != entry.size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated file in tar"));
        }
    }
    Ok((chunks, file_hash.finish()))
}

/// The TOC entry for a tar entry (chunk fields filled in later for files).
fn toc_entry_for(entry: &ScannedEntry) -> io::Result<TocEntry> {
    let kind = match entry.typeflag {
        b'0' | 0 | b'7' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        b'6' => "fifo",
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "entry {:?}: tar type {:?} cannot be written as zstd:chunked",
                    String::from_utf8_lossy(&entry.name),
                    other as char
                ),
            ))
        }
    };
    let name = String::from_utf8(entry.name.clone())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry name is not UTF-8"))?;
    let xattrs: HashMap<String, String> = entry
        .xattrs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect();
    Ok(TocEntry {
        kind: kind.into(),
        name,
        link_name: String::from_utf8_lossy(&entry.link_name).into_owned(),
        mode: entry.mode as i64,
        size: if kind == "reg" { entry.size as i64 } else { 0 },
        uid: entry.uid as i64,
        gid: entry.gid as i64,
        mod_time: format_time(entry.mtime.0, entry.mtime.1),
        dev_major: entry.dev.0 as i64,
        dev_minor: entry.dev.1 as i64,
        xattrs: (!xattrs.is_empty()).then_some(xattrs),
        ..Default::default()
    })
}

/// Add a file's entry and its chunk entries to the TOC.
fn add_chunks(entries: &mut Vec<TocEntry>, mut file: TocEntry, written: (Vec<WrittenChunk>, Digest), end: u64) {
    let (chunks, digest) = written;
    file.digest = digest.to_string();
    file.offset = chunks[0].blob_offset as i64;
    file.end_offset = end as i64;
    let chunk_type = |c: &WrittenChunk| if c.zeros { "zeros".to_string() } else { String::new() };
    if chunks.len() > 1 {
        file.chunk_size = chunks[0].len as i64;
        file.chunk_digest = chunks[0].digest.to_string();
        file.chunk_type = chunk_type(&chunks[0]);
    }
    let name = file.name.clone();
    entries.push(file);
    if chunks.len() > 1 {
        for c in &chunks[1..] {
            entries.push(TocEntry {
                kind: "chunk".into(),
                name: name.clone(),
                offset: c.blob_offset as i64,
                chunk_offset: c.file_offset as i64,
                chunk_size: c.len as i64,
                chunk_digest: c.digest.to_string(),
                chunk_type: chunk_type(c),
                ..Default::default()
            });
        }
    }
}

/// Append TOC, tar-split and footer; compute the annotations.
fn finish<W: Write>(
    mut out: Out<W>,
    split: TarSplit,
    mut toc: Toc,
    diff_id: Digest,
    chunks: usize,
) -> io::Result<WrittenLayer> {
    let split_uncompressed = split.uncompressed;
    let split_bytes = split.encoder.finish()?;
    toc.tar_split_digest = Some(Digest::of(&split_bytes).to_string());
    let json = serde_json::to_vec(&toc).map_err(io::Error::other)?;
    let toc_bytes = zstd::bulk::compress(&json, DEFAULT_ZSTD_LEVEL)?;
    let toc_offset = out.pos + 8;
    out.put(&skippable_frame(&toc_bytes))?;
    let split_offset = out.pos + 8;
    out.put(&skippable_frame(&split_bytes))?;
    let toc_pos = (toc_offset, toc_bytes.len() as u64, json.len() as u64);
    let split_pos = (split_offset, split_bytes.len() as u64, split_uncompressed);
    out.put(&skippable_frame(&zc::footer(toc_pos, split_pos)))?;
    out.inner.flush()?;
    let position = format!("{}:{}:{}:1", toc_pos.0, toc_pos.1, toc_pos.2);
    let checksum = Digest::of(&toc_bytes).to_string();
    let annotations: HashMap<String, String> = [
        (zc::MANIFEST_POSITION_KEY, position.clone()),
        (zc::MANIFEST_CHECKSUM_KEY, checksum.clone()),
        (
            zc::TARSPLIT_POSITION_KEY,
            format!("{}:{}:{}", split_pos.0, split_pos.1, split_pos.2),
        ),
        // The older dialect's keys too: older readers (skopeo 1.9, podman 4.3) find the TOC.
        (zc::OLD_MANIFEST_POSITION_KEY, position),
        (zc::OLD_MANIFEST_CHECKSUM_KEY, checksum),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(WrittenLayer {
        digest: out.hasher.finish(),
        size: out.pos,
        diff_id,
        annotations,
        toc_entries: toc.entries.len(),
        chunks,
        toc_bytes: toc_bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::decode_chunk;
    use crate::format::toc::{to_index, Dialect};
    use crate::format::zstd_chunked::{decode_toc, location_from_annotations, location_from_footer};
    use crate::model::ChunkCodec;
    use crate::model::EntryKind;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Gen {
        File(String, Vec<u8>, Option<(String, Vec<u8>)>),
        Dir(String),
        Symlink(String, String),
        Fifo(String),
    }

    fn content() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2000),
            (1usize..3, any::<u8>()).prop_map(|(k, b)| vec![b; k * 300_000]),
            (any::<u64>(), 300_000usize..900_000).prop_map(|(seed, n)| noise(seed, n)),
            (100_000usize..600_000).prop_map(|n| {
                let mut v = noise(7, n);
                v[n / 4..n / 2].fill(0);
                v
            }),
        ]
    }

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn entry() -> impl Strategy<Value = Gen> {
        // Components never start with a dot, so `..` (which tar refuses to write) is not made.
        let name = "[a-z]{1,12}(/[a-z0-9_-][a-z0-9._-]{0,39}){0,4}";
        prop_oneof![
            (
                name,
                content(),
                proptest::option::of(("user\\.[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..40)))
            )
                .prop_map(|(n, c, x)| Gen::File(n, c, x)),
            name.prop_map(Gen::Dir),
            (name, "[a-z/.]{1,150}").prop_map(|(n, t)| Gen::Symlink(n, t)),
            name.prop_map(Gen::Fifo),
            ("[a-z]{100,140}", content()).prop_map(|(n, c)| Gen::File(format!("long/{n}"), c, None)),
        ]
    }

    fn build_tar(entries: &[Gen]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(1000);
            h.set_gid(1000);
            match e {
                Gen::File(n, c, x) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(c.len() as u64);
                    if let Some((k, v)) = x {
                        let key = format!("SCHILY.xattr.{k}");
                        b.append_pax_extensions([(key.as_str(), v.as_slice())]).unwrap();
                    }
                    b.append_data(&mut h, n, c.as_slice()).unwrap();
                }
                Gen::Dir(n) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, n, &[][..]).unwrap();
                }
                Gen::Symlink(n, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, n, t).unwrap();
                }
                Gen::Fifo(n) => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_data(&mut h, n, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Write, then check every promise of the format against the input.
    fn round_trip(input: &[u8]) {
        let mut blob = Vec::new();
        let written = write_zstd_chunked(input, &mut blob, &WriterOptions::default()).unwrap();
        assert_eq!(written.size as usize, blob.len());
        assert_eq!(written.digest, Digest::of(&blob));
        assert_eq!(written.diff_id, Digest::of(input));
        // 1. A plain zstd decoder gives back the input byte for byte.
        assert!(
            zstd::stream::decode_all(blob.as_slice()).unwrap() == input,
            "stream differs"
        );
        // 2. The footer and the annotations agree on where the TOC is; it verifies.
        let by_footer = location_from_footer(&blob[blob.len() - 72..]).unwrap();
        let mut by_annotation = location_from_annotations(&written.annotations).unwrap().unwrap();
        assert_eq!(by_annotation.offset, by_footer.offset);
        let toc_bytes = &blob[by_footer.offset as usize..(by_footer.offset + by_footer.compressed_len) as usize];
        by_annotation.checksum.as_ref().unwrap();
        let toc = decode_toc(toc_bytes, &by_annotation).unwrap();
        by_annotation.checksum = None;
        let index = to_index("test", &toc, blob.len() as u64, Dialect::ZstdChunked).unwrap();
        // 3. Every file read through the TOC is the file in the tar; every chunk verifies.
        let mut archive = tar::Archive::new(input);
        let mut files = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type() == tar::EntryType::Regular {
                let mut c = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut c).unwrap();
                files.push(c);
            }
        }
        let regular: Vec<_> = index.entries.iter().filter(|e| e.kind == EntryKind::Regular).collect();
        assert_eq!(regular.len(), files.len());
        for (entry, want) in regular.iter().zip(&files) {
            let mut got = Vec::new();
            for c in index.chunks_of(entry) {
                let raw = &blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize];
                got.extend(decode_chunk(ChunkCodec::Zstd, c, raw).unwrap());
            }
            assert!(&got == want, "{} differs", entry.path);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn random_tars_round_trip(entries in proptest::collection::vec(entry(), 0..12)) {
            round_trip(&build_tar(&entries));
        }
    }

    #[test]
    fn long_runs_of_entries_without_data_round_trip() {
        // 20,000 empty files: 10 MB of headers with no payload between them, written as
        // several header frames.
        let mut entries: Vec<Gen> = (0..20_000)
            .map(|i| Gen::File(format!("d/f{i}"), Vec::new(), None))
            .collect();
        entries.push(Gen::File("last".into(), b"data".to_vec(), None));
        round_trip(&build_tar(&entries));
    }

    #[test]
    fn padding_after_the_end_blocks_is_kept() {
        let mut tar = build_tar(&[Gen::File("a".into(), b"x".to_vec(), None)]);
        tar.extend_from_slice(&[0u8; 8192]);
        round_trip(&tar);
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let mut tar = build_tar(&[Gen::File("a".into(), vec![1; 5000], None)]);
        tar[100] ^= 0xff; // header checksum no longer matches
        assert!(write_zstd_chunked(tar.as_slice(), Vec::new(), &WriterOptions::default()).is_err());
        let tar = build_tar(&[Gen::File("a".into(), vec![1; 5000], None)]);
        assert!(write_zstd_chunked(&tar[..1500], Vec::new(), &WriterOptions::default()).is_err());
    }
}
