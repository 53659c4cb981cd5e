//! Fetch every chunk of a lazily mountable layer and check it against the index: what
//! `lamina inspect --verify` does, and a proof that a TOC really describes its blob.

use crate::format::chunk::decode_chunk_to;
use crate::index::LayerIndex;
use crate::model::ChunkKind;
use crate::model::EntryKind;
use crate::registry::resolve::Layer;
use crate::registry::Registry;

/// Counts from a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Regular files whose every chunk verified.
    pub files: u64,
    /// Chunks verified.
    pub chunks: u64,
    /// Uncompressed bytes verified.
    pub bytes: u64,
}

/// Fetch and check every chunk; the first bad one is an error naming the file.
pub async fn verify_layer(
    registry: &Registry,
    repo: &str,
    layer: &Layer,
    index: &LayerIndex,
) -> Result<Verified, String> {
    let codec = index.codec;
    let mut v = Verified::default();
    for entry in index.entries.iter().filter(|e| e.kind == EntryKind::Regular) {
        let mut file_hash = crate::digest::Hasher::new();
        for chunk in index.chunks_of(entry) {
            let compressed = if chunk.kind == ChunkKind::Zeros {
                bytes::Bytes::new()
            } else {
                registry
                    .blob_range(repo, &layer.digest, chunk.blob_offset, chunk.blob_len)
                    .await
                    .map_err(|e| e.to_string())?
            };
            // Streamed into the file's hash: a large chunk is never held whole.
            let mut into_hash = FileHash(&mut file_hash);
            decode_chunk_to(codec, chunk, &compressed, &mut into_hash).map_err(|e| format!("{}: {e}", entry.path))?;
            v.chunks += 1;
            v.bytes += chunk.len;
        }
        if let Some(d) = entry.digest {
            if file_hash.finish().hex() != hex::encode(d) {
                return Err(format!("{}: the file's digest does not match its chunks", entry.path));
            }
        }
        v.files += 1;
    }
    Ok(v)
}

/// A writer feeding a file's hash.
struct FileHash<'a>(&'a mut crate::digest::Hasher);

impl std::io::Write for FileHash<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
