//! containerd's filter strings and mountinfo lines (the snapshotter), store names and
//! tar-splits (the layer store): errors are fine, panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(filters) = lamina::snapshotter::filter::parse_all(&[s.to_string()]) {
            let _ = lamina::snapshotter::filter::matches_any(&filters, |p| p.first().cloned());
        }
        let _ = lamina::snapshotter::remote::is_mount_point(s, std::path::Path::new("/a b"));
        let _ = lamina::layerstore::layer::decode_reference(s.as_bytes());
        let _ = lamina::format::tar_split::position(s);
    }
    let _ = lamina::format::tar_split::tar_size(data);
});
