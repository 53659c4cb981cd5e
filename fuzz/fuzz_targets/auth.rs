//! Registry headers and the Docker config file: errors are fine, panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = lamina::registry::auth::parse_challenge(s);
        let _ = lamina::registry::auth::credentials_from_config(s, "localhost:5000");
        let _ = lamina::registry::client::parse_content_range(s);
    }
});
