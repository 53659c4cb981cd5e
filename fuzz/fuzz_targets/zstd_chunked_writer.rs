//! Arbitrary bytes as a layer tar through the zstd:chunked writer (and so the raw tar scanner):
//! errors are fine, panics are bugs, and whatever is accepted decompresses to the input.
#![no_main]
use lamina::format::writer::{write_zstd_chunked, WriterOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if write_zstd_chunked(data, &mut out, &WriterOptions::default()).is_ok() {
        let back = zstd::stream::decode_all(out.as_slice()).expect("our own output decodes");
        assert_eq!(back, data);
    }
});
