//! Stored layer indexes, past the checksum: errors are fine, panics are bugs, and what decodes
//! encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = lamina::index::disk::decode_unchecked(data) {
        let again = lamina::index::disk::encode(&index);
        let reparsed = lamina::index::disk::decode(&again).expect("our own encoding decodes");
        assert_eq!(reparsed, index);
    }
});
