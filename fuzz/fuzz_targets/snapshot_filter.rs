//! containerd's filter strings and mountinfo lines as the snapshotter reads them: errors are
//! fine, panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(filters) = lamina::snapshotter::filter::parse_all(&[s.to_string()]) {
            let _ = lamina::snapshotter::filter::matches_any(&filters, |p| p.first().cloned());
        }
        let _ = lamina::snapshotter::remote::is_mount_point(s, std::path::Path::new("/a b"));
    }
});
