//! Manifests, indexes and configs from a registry: errors are fine, panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lamina::registry::manifest::{parse_config, parse_manifest, select_platform, Manifest, Platform};

fuzz_target!(|data: &[u8]| {
    for ct in [None, Some("application/vnd.oci.image.index.v1+json")] {
        if let Ok(Manifest::Index(i)) = parse_manifest("fuzz", ct, data) {
            let _ = select_platform("fuzz", &i, &Platform::host());
        }
    }
    let _ = parse_config("fuzz", data);
});
