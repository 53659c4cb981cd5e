//! Turning a chunk's compressed bytes from the blob into verified file bytes.
//!
//! Invariant: bytes leave this module only when their length and sha256 match the index.

use std::io::Read;

use crate::model::{Chunk, ChunkCodec, ChunkKind};

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
}

/// Decode and verify one chunk from exactly its `blob_len` compressed bytes.
pub fn decode_chunk(codec: ChunkCodec, chunk: &Chunk, compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let decode_err = |reason: String| ChunkError::Decode {
        blob_offset: chunk.blob_offset,
        reason,
    };
    if chunk.kind == ChunkKind::Zeros {
        return verified(chunk, vec![0u8; chunk.len as usize]);
    }
    let mut out = Vec::with_capacity(chunk.len as usize);
    let got = match codec {
        ChunkCodec::Zstd => {
            let d = zstd::stream::read::Decoder::with_buffer(compressed).map_err(|e| decode_err(e.to_string()))?;
            d.take(chunk.len + 1).read_to_end(&mut out)
        }
        ChunkCodec::Stream => {
            return Err(decode_err("a plain layer's chunks cannot be fetched one by one".into()));
        }
        ChunkCodec::Gzip => {
            let mut d = flate2::bufread::GzDecoder::new(compressed);
            std::io::copy(&mut (&mut d).take(chunk.inner_offset), &mut std::io::sink())
                .map_err(|e| decode_err(e.to_string()))?;
            // A member may hold more than the chunk (tar padding, the next header): take the chunk.
            d.take(chunk.len).read_to_end(&mut out)
        }
    };
    got.map_err(|e| decode_err(e.to_string()))?;
    if out.len() as u64 != chunk.len {
        return Err(decode_err(format!("{} bytes instead of {}", out.len(), chunk.len)));
    }
    verified(chunk, out)
}

fn verified(chunk: &Chunk, data: Vec<u8>) -> Result<Vec<u8>, ChunkError> {
    let actual = crate::digest::Digest::of(&data);
    if actual.hex() != hex::encode(chunk.digest) {
        return Err(ChunkError::Digest {
            blob_offset: chunk.blob_offset,
            expected: hex::encode(chunk.digest),
        });
    }
    Ok(data)
}
