//! TOCs and footers from untrusted blobs: errors are fine, panics are bugs, and an index that
//! is accepted keeps its invariants (chunks tile each file, ranges inside the blob).
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
            }
        }
    }
});
