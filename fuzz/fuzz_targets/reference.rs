//! Image references: errors are fine, panics are bugs; what parses must print and re-parse
//! to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = lamina::reference::ImageRef::parse(s) {
            let again = lamina::reference::ImageRef::parse(&r.to_string()).expect("printed reference re-parses");
            assert_eq!(again, r);
        }
        let _ = s.parse::<lamina::digest::Digest>();
        let _ = lamina::changeset::LayerPath::normalize(data).map(|p| lamina::changeset::classify(&p));
    }
});
