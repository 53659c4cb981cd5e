//! Reading a tar-split (vbatts/tar-split JSON lines, as zstd:chunked carries it): the size of
//! the tar stream it rebuilds, which containers/storage needs of a layer it exports.
//!
//! ```text
//! {"type":1,"name":"etc/hosts","size":123,"payload":"<crc64>","position":1}   a file's bytes
//! {"type":2,"payload":"<base64 raw bytes>","position":0}                        headers, padding
//! ```

use base64::Engine as _;

/// Largest uncompressed tar-split read (real ones are well under 1 MiB per 1,000 files).
pub const MAX_TAR_SPLIT_BYTES: u64 = 256 << 20;

#[derive(serde::Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    payload: Option<String>,
}

/// The length of the tar stream `split` describes: file sizes plus raw segments.
pub fn tar_size(split: &[u8]) -> Result<u64, String> {
    if split.len() as u64 > MAX_TAR_SPLIT_BYTES {
        return Err("tar-split over 256 MiB".into());
    }
    let mut total: u64 = 0;
    for (n, line) in split.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: Line = serde_json::from_slice(line).map_err(|e| format!("tar-split line {}: {e}", n + 1))?;
        let add = match l.kind {
            1 => l.size.unwrap_or(0),
            2 => {
                let p = l.payload.unwrap_or_default();
                base64::engine::general_purpose::STANDARD
                    .decode(p.as_bytes())
                    .map_err(|e| format!("tar-split line {}: payload: {e}", n + 1))?
                    .len() as u64
            }
            k => return Err(format!("tar-split line {}: unknown type {k}", n + 1)),
        };
        total = total
            .checked_add(add)
            .ok_or_else(|| "tar-split sizes overflow".to_string())?;
    }
    Ok(total)
}

/// The tar-split position annotation `offset:length:uncompressed-length`.
pub fn position(annotation: &str) -> Option<(u64, u64, u64)> {
    let f: Vec<u64> = annotation.split(':').map(|f| f.parse().ok()).collect::<Option<_>>()?;
    match f[..] {
        [offset, len, uncompressed] => Some((offset, len, uncompressed)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_add_up() {
        let split = br#"{"type":2,"payload":"AAAA","position":0}
{"type":1,"name":"a","size":5,"payload":"x","position":1}

{"type":2,"payload":"","position":2}
"#;
        assert_eq!(tar_size(split), Ok(3 + 5));
        assert!(tar_size(br#"{"type":9}"#).is_err());
        assert!(tar_size(b"{").is_err());
        assert_eq!(position("1:2:3"), Some((1, 2, 3)));
        assert_eq!(position("1:2"), None);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = tar_size(&bytes);
            let _ = position(&String::from_utf8_lossy(&bytes));
        }
    }
}
