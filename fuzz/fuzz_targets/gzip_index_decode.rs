//! Gzip indexes from the registry: errors are fine, panics are bugs, and what decodes encodes
//! back to an index that decodes the same. The layer digest and size are taken from the input's
//! own header so that the fuzzer gets past those checks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 80 {
        return;
    }
    let layer: lamina::digest::Digest = format!("sha256:{}", hex::encode(&data[16..48])).parse().unwrap();
    let size = u64::from_le_bytes(data[48..56].try_into().unwrap());
    if let Ok(gz) = lamina::format::gzip_index::decode(data, &layer, size) {
        let again = lamina::format::gzip_index::encode(&gz);
        let reparsed = lamina::format::gzip_index::decode(&again, &layer, size).expect("our own encoding decodes");
        assert_eq!(reparsed, gz);
    }
});
