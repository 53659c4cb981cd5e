//! Turning a chunk's compressed bytes from the blob into verified file bytes, streaming.
//!
//! ```text
//! compressed bytes ─► zstd / gzip decoder ─► 64 KiB block ─► sha256 + length ─► writer
//!                                                       (the chunk store's temporary file)
//! ```
//!
//! Invariants: a chunk is checked against the caps below before anything is allocated or
//! decoded for it; the decoder's output is never held whole (memory per chunk is one block
//! plus the decoder's window, whatever the chunk's length); [`decode_chunk_to`] says `Ok`
//! only when the length and the sha256 match the index, and its callers publish the bytes
//! written only then.
//!
//! | cap | value | why |
//! |---|---|---|
//! | [`MAX_CHUNK_BYTES`] | 1 GiB | uncompressed data chunk: lamina's writer cuts ≤ 128 KiB, eStargz 4 MiB, containers/storage's rollsum splits ~64 KiB (unbounded only for long runs of one non-zero byte, or whole files in 2021's first zstd:chunked) |
//! | [`MAX_CHUNK_BLOB_BYTES`] | 64 MiB | compressed chunk, held in memory while it is fetched |
//! | inner offset (eStargz) | [`MAX_CHUNK_BYTES`] | bytes decoded and dropped before the chunk starts |
//! | zstd window | 128 MiB (zstd's default) | the decoder's memory (only what it decodes is touched); skopeo's frames ask for more than 16 MiB |
//!
//! Chunks of zeros have no cap: they are never decoded nor stored (a read fills zeros).

use std::io::{Read, Write};

use crate::format::zran::{checkpoint_at, Checkpoint, Resume};
use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkCodec, ChunkKind};

/// Largest uncompressed data chunk accepted. Decoding is streamed, so this bounds the disk
/// and time one read may cost, not memory.
pub const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// Largest compressed chunk accepted: its bytes are held in memory while they arrive.
pub const MAX_CHUNK_BLOB_BYTES: u64 = 64 << 20;
/// Largest zstd decoding context kept for the next chunk of a thread.
const KEPT_CONTEXT_BYTES: usize = 8 << 20;
/// Decoded bytes handed to the writer at a time.
const BLOCK_BYTES: usize = 64 << 10;

/// Why a chunk was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The compressed bytes do not decode.
    #[error("chunk at blob offset {blob_offset}: cannot decompress: {reason}")]
    Decode {
        /// Where the chunk is.
        blob_offset: u64,
        /// The decoder's message.
        reason: String,
    },
    /// Decoded, but not the bytes the index names.
    #[error("chunk at blob offset {blob_offset}: content digest mismatch (expected sha256:{expected})")]
    Digest {
        /// Where the chunk is.
        blob_offset: u64,
        /// The digest the index gives.
        expected: String,
    },
    /// The index claims more than a cap allows: refused before anything is fetched.
    #[error("chunk at blob offset {blob_offset}: {what} of {len_bytes} bytes is over the {cap_bytes}-byte cap")]
    TooLarge {
        /// Where the chunk is.
        blob_offset: u64,
        /// Which length.
        what: &'static str,
        /// The length claimed.
        len_bytes: u64,
        /// The cap.
        cap_bytes: u64,
    },
    /// The writer failed (the bytes may have been right).
    #[error("chunk at blob offset {blob_offset}: writing: {reason}")]
    Write {
        /// Where the chunk is.
        blob_offset: u64,
        /// The writer's message.
        reason: String,
    },
}

impl ChunkError {
    /// Whether fetching the bytes again could help (they arrived wrong), as opposed to a
    /// chunk the index makes impossible or a local failure.
    pub fn is_bad_bytes(&self) -> bool {
        matches!(self, ChunkError::Decode { .. } | ChunkError::Digest { .. })
    }
}

/// Check a chunk's claimed lengths against the caps; zeros chunks have none.
pub fn check_limits(chunk: &Chunk) -> Result<(), ChunkError> {
    if chunk.kind == ChunkKind::Zeros {
        return Ok(());
    }
    let over = |what, len_bytes, cap_bytes| ChunkError::TooLarge {
        blob_offset: chunk.blob_offset,
        what,
        len_bytes,
        cap_bytes,
    };
    if chunk.len > MAX_CHUNK_BYTES {
        return Err(over("uncompressed length", chunk.len, MAX_CHUNK_BYTES));
    }
    if chunk.blob_len > MAX_CHUNK_BLOB_BYTES {
        return Err(over("compressed length", chunk.blob_len, MAX_CHUNK_BLOB_BYTES));
    }
    if chunk.inner_offset > MAX_CHUNK_BYTES {
        return Err(over("inner offset", chunk.inner_offset, MAX_CHUNK_BYTES));
    }
    Ok(())
}

/// The files of a layer with a chunk over a cap, each with its first such chunk's error: a
/// layer is still served, reads of these files fail.
pub fn refused_entries(index: &LayerIndex) -> impl Iterator<Item = (&crate::changeset::LayerPath, ChunkError)> {
    index.entries.iter().filter_map(|e| {
        let refused = index.chunks_of(e).iter().find_map(|c| check_limits(c).err());
        refused.map(|err| (&e.path, err))
    })
}

/// Decode one data chunk from exactly its `blob_len` compressed bytes into `out`, block by
/// block, hashing as it goes. `Ok` means `out` received exactly the chunk's bytes; on an
/// error `out` may hold anything and must be thrown away.
pub fn decode_chunk_to(
    codec: ChunkCodec,
    chunk: &Chunk,
    compressed: &[u8],
    out: &mut dyn Write,
) -> Result<(), ChunkError> {
    decode_chunk_from(codec, &[], chunk, compressed, out)
}

/// [`decode_chunk_to`] for any codec: `checkpoints` are the layer's gzip index checkpoints
/// ([`ChunkCodec::Deflate`]; empty for the others).
pub fn decode_chunk_from(
    codec: ChunkCodec,
    checkpoints: &[Checkpoint],
    chunk: &Chunk,
    compressed: &[u8],
    out: &mut dyn Write,
) -> Result<(), ChunkError> {
    check_limits(chunk)?;
    let decode_err = |reason: String| ChunkError::Decode {
        blob_offset: chunk.blob_offset,
        reason,
    };
    if chunk.kind == ChunkKind::Zeros {
        return copy_verified(chunk, &mut std::io::repeat(0).take(chunk.len), out);
    }
    match codec {
        ChunkCodec::Zstd => {
            // The window stays zstd's default limit (128 MiB): skopeo's (klauspost) frames ask
            // for more than 16 MiB.
            with_zstd_context(|ctx| {
                copy_verified(chunk, zstd::stream::read::Decoder::with_context(compressed, ctx), out)
            })
        }
        ChunkCodec::Stream => Err(decode_err("a plain layer's chunks cannot be fetched one by one".into())),
        ChunkCodec::Raw => {
            if compressed.len() as u64 != chunk.len {
                return Err(decode_err(format!(
                    "{} bytes instead of {}",
                    compressed.len(),
                    chunk.len
                )));
            }
            copy_verified(chunk, compressed, out)
        }
        ChunkCodec::Deflate => {
            let point = checkpoint_at(checkpoints, chunk.blob_offset)
                .ok_or_else(|| decode_err("no checkpoint starts at this chunk's offset".into()))?;
            let mut d = Resume::new(point.bits, &point.window, compressed).map_err(|e| decode_err(e.to_string()))?;
            skip_exactly(&mut d, chunk.inner_offset).map_err(decode_err)?;
            copy_verified(chunk, d.take(chunk.len), out)
        }
        ChunkCodec::Gzip => {
            let mut d = flate2::bufread::GzDecoder::new(compressed);
            let skipped = std::io::copy(&mut (&mut d).take(chunk.inner_offset), &mut std::io::sink())
                .map_err(|e| decode_err(e.to_string()))?;
            if skipped != chunk.inner_offset {
                return Err(decode_err(format!(
                    "member ends before inner offset {}",
                    chunk.inner_offset
                )));
            }
            // A member may hold more than the chunk (tar padding, the next header): take the chunk.
            copy_verified(chunk, d.take(chunk.len), out)
        }
    }
}

/// Run `f` with this thread's zstd decoding context: creating one per chunk was a tenth of
/// zstd's time. A context that grew past [`KEPT_CONTEXT_BYTES`] (a chunk with a large window)
/// is not kept.
fn with_zstd_context<T>(f: impl FnOnce(&mut zstd::zstd_safe::DCtx<'static>) -> T) -> T {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            let ctx = kept.get_or_insert_with(zstd::zstd_safe::DCtx::create);
            let out = f(ctx);
            if ctx.sizeof() > KEPT_CONTEXT_BYTES {
                *kept = None;
            }
            out
        }
        Err(_) => f(&mut zstd::zstd_safe::DCtx::create()),
    })
}

fn skip_exactly(d: &mut impl Read, n: u64) -> Result<(), String> {
    let skipped = std::io::copy(&mut d.take(n), &mut std::io::sink()).map_err(|e| e.to_string())?;
    if skipped != n {
        return Err(format!("stream ends before inner offset {n}"));
    }
    Ok(())
}

/// Decode and verify one chunk into memory (tests, fuzzing and small callers; the daemon
/// streams with [`decode_chunk_to`]).
pub fn decode_chunk(codec: ChunkCodec, chunk: &Chunk, compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let mut out = Vec::new();
    decode_chunk_to(codec, chunk, compressed, &mut out)?;
    Ok(out)
}

/// Copy `input` to `out` in blocks, refusing more or fewer bytes than `chunk.len` and a
/// sha256 other than the chunk's.
pub fn copy_verified(chunk: &Chunk, input: impl Read, out: &mut dyn Write) -> Result<(), ChunkError> {
    thread_local! {
        // One block per thread, not one zeroed per chunk (that was 64 KiB of memset a chunk).
        static BLOCK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BLOCK.with(|cell| match cell.try_borrow_mut() {
        Ok(mut block) => {
            block.resize(BLOCK_BYTES, 0);
            copy_verified_with(chunk, input, out, &mut block)
        }
        Err(_) => copy_verified_with(chunk, input, out, &mut vec![0u8; BLOCK_BYTES]),
    })
}

fn copy_verified_with(
    chunk: &Chunk,
    mut input: impl Read,
    out: &mut dyn Write,
    block: &mut [u8],
) -> Result<(), ChunkError> {
    let decode_err = |reason: String| ChunkError::Decode {
        blob_offset: chunk.blob_offset,
        reason,
    };
    let mut hasher = crate::digest::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = match input.read(block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decode_err(e.to_string())),
        };
        total += n as u64;
        if total > chunk.len {
            return Err(decode_err(format!("more than {} bytes", chunk.len)));
        }
        hasher.update(&block[..n]);
        out.write_all(&block[..n]).map_err(|e| ChunkError::Write {
            blob_offset: chunk.blob_offset,
            reason: e.to_string(),
        })?;
    }
    if total != chunk.len {
        return Err(decode_err(format!("{total} bytes instead of {}", chunk.len)));
    }
    if hasher.finish().hex() != hex::encode(chunk.digest) {
        return Err(ChunkError::Digest {
            blob_offset: chunk.blob_offset,
            expected: hex::encode(chunk.digest),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_of(data: &[u8], blob_len: u64) -> Chunk {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(crate::digest::Digest::of(data).hex(), &mut digest).unwrap();
        Chunk {
            file_offset: 0,
            len: data.len() as u64,
            blob_offset: 7,
            blob_len,
            inner_offset: 0,
            digest,
            kind: ChunkKind::Data,
        }
    }

    #[test]
    fn caps_are_checked_before_decoding() {
        let base = chunk_of(b"x", 10);
        let cases = [
            (
                Chunk {
                    len: 1 << 40,
                    ..base.clone()
                },
                Some("uncompressed length"),
            ),
            (
                Chunk {
                    len: MAX_CHUNK_BYTES,
                    ..base.clone()
                },
                None,
            ),
            (
                Chunk {
                    blob_len: MAX_CHUNK_BLOB_BYTES + 1,
                    ..base.clone()
                },
                Some("compressed length"),
            ),
            (
                Chunk {
                    inner_offset: 1 << 40,
                    ..base.clone()
                },
                Some("inner offset"),
            ),
            (
                Chunk {
                    len: 1 << 40,
                    kind: ChunkKind::Zeros,
                    ..base.clone()
                },
                None,
            ),
        ];
        for (c, want) in cases {
            match (check_limits(&c), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => {
                    assert!(e.to_string().contains(w) && !e.is_bad_bytes(), "{w}: {e}");
                    // The decoder refuses it too, before allocating anything.
                    assert_eq!(decode_chunk(ChunkCodec::Zstd, &c, b"").unwrap_err(), e);
                }
                (got, want) => panic!("{c:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn zstd_chunks_decode_streaming_and_verify() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let c = chunk_of(&data, z.len() as u64);
        assert_eq!(decode_chunk(ChunkCodec::Zstd, &c, &z).unwrap(), data);
        let cases = [
            (
                Chunk {
                    len: c.len - 1,
                    ..c.clone()
                },
                "more than",
            ),
            (
                Chunk {
                    len: c.len + 1,
                    ..c.clone()
                },
                "instead of",
            ),
            (
                Chunk {
                    digest: [1; 32],
                    ..c.clone()
                },
                "digest mismatch",
            ),
        ];
        for (bad, want) in cases {
            let e = decode_chunk(ChunkCodec::Zstd, &bad, &z).unwrap_err();
            assert!(e.to_string().contains(want) && e.is_bad_bytes(), "{want}: {e}");
        }
        assert!(decode_chunk(ChunkCodec::Zstd, &c, &z[..z.len() / 2]).is_err());
    }

    #[test]
    fn a_large_chunk_costs_one_block_of_memory() {
        // 64 MiB of zeros compress to a few KiB; the writer sees blocks, never the whole.
        struct Blocks(u64, usize);
        impl Write for Blocks {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len() as u64;
                self.1 = self.1.max(b.len());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let len = 64usize << 20;
        let z = zstd::encode_all(std::io::repeat(0).take(len as u64), 3).unwrap();
        let mut c = chunk_of(&vec![0u8; len], z.len() as u64);
        c.len = len as u64;
        let mut out = Blocks(0, 0);
        decode_chunk_to(ChunkCodec::Zstd, &c, &z, &mut out).unwrap();
        assert_eq!((out.0, out.1), (len as u64, BLOCK_BYTES));
    }
}
