//! TOCs and footers from untrusted blobs: errors are fine, panics are bugs, and an index that
//! is accepted keeps its invariants (chunks tile each file, ranges inside the blob); its
//! chunks are then decoded from the input taken as the blob (streamed into a sink: memory
//! stays bounded whatever a chunk claims).
#![no_main]
use lamina::format::toc::{to_index, Dialect, Toc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lamina::format::zstd_chunked::location_from_footer(data);
    let _ = lamina::format::estargz::parse_footer(data);
    let _ = lamina::format::estargz::decode_toc(data, None);
    let loc = lamina::format::zstd_chunked::TocLocation {
        dialect: lamina::format::zstd_chunked::ZstdDialect::Current,
        offset: 0,
        compressed_len: data.len() as u64,
        uncompressed_len: 1 << 16,
        checksum: None,
    };
    let _ = lamina::format::zstd_chunked::decode_toc(data, &loc);
    if let Ok(toc) = serde_json::from_slice::<Toc>(data) {
        for dialect in [Dialect::ZstdChunked, Dialect::Estargz { toc_offset: 5000 }] {
            if let Ok(index) = to_index("fuzz", &toc, 10_000, dialect) {
                for e in &index.entries {
                    let chunks = index.chunks_of(e);
                    let covered: u64 = chunks.iter().map(|c| c.len).sum();
                    assert!(chunks.is_empty() || covered == e.size);
                    assert!(chunks.iter().all(|c| c.blob_offset + c.blob_len <= 10_000));
                }
                decode_all(&index, data);
            }
        }
    }
});

/// Decode every data chunk of `index` from `data` padded to the 10,000-byte blob (chunks of
/// zeros are never decoded by the daemon, and may claim any length).
fn decode_all(index: &lamina::index::LayerIndex, data: &[u8]) {
    let mut blob = data.to_vec();
    blob.resize(10_000, 0);
    for c in index.chunks.iter().filter(|c| c.kind == lamina::model::ChunkKind::Data) {
        let raw = &blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize];
        let _ = lamina::format::chunk::decode_chunk_to(index.codec, c, raw, &mut std::io::sink());
    }
}
