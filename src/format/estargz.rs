//! eStargz: the footer (an empty gzip member whose extra field holds the TOC offset) and the
//! TOC (the tar entry `stargz.index.json` in the blob's last payload member).
//!
//! ```text
//! 51-byte footer: 1f 8b 08 04 <mtime 4> 00 ff | XLEN=26 | 'S' 'G' LEN=22 | %016x(toc offset) "STARGZ" | empty deflate + trailer
//! 47-byte (old stargz) footer: same, with the 22-byte extra field holding %016x "STARGZ" directly
//! ```

use std::io::Read;

use super::toc::{Toc, MAX_TOC_BYTES};
use crate::digest::Digest;

/// The layer annotation holding the sha256 of the TOC JSON.
pub const TOC_DIGEST_KEY: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Name of the TOC entry.
pub const TOC_NAME: &str = "stargz.index.json";
/// Footer size of eStargz.
pub const FOOTER_BYTES: usize = 51;
/// Footer size of the older stargz.
pub const OLD_FOOTER_BYTES: usize = 47;

/// The TOC offset and the footer size, if `tail` (the blob's last bytes) ends with a footer.
pub fn parse_footer(tail: &[u8]) -> Option<(u64, usize)> {
    let hex_offset = |s: &[u8]| u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    if tail.len() >= FOOTER_BYTES {
        let f = &tail[tail.len() - FOOTER_BYTES..];
        if f[..4] == [0x1f, 0x8b, 0x08, 0x04]
            && f[10..12] == [26, 0]
            && &f[12..14] == b"SG"
            && f[14..16] == [22, 0]
            && &f[32..38] == b"STARGZ"
        {
            return Some((hex_offset(&f[16..32])?, FOOTER_BYTES));
        }
    }
    if tail.len() >= OLD_FOOTER_BYTES {
        let f = &tail[tail.len() - OLD_FOOTER_BYTES..];
        if f[..4] == [0x1f, 0x8b, 0x08, 0x04] && f[10..12] == [22, 0] && &f[28..34] == b"STARGZ" {
            return Some((hex_offset(&f[12..28])?, OLD_FOOTER_BYTES));
        }
    }
    None
}

/// Decode the TOC from the bytes between the TOC offset and the footer, checking the digest
/// annotation when there is one.
pub fn decode_toc(member: &[u8], expected: Option<&Digest>) -> Result<Toc, String> {
    let gz = flate2::bufread::MultiGzDecoder::new(member);
    let mut archive = tar::Archive::new(gz.take(MAX_TOC_BYTES + 4096));
    let entries = archive.entries().map_err(|e| format!("TOC tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("TOC tar: {e}"))?;
        if entry.path_bytes().as_ref() != TOC_NAME.as_bytes() {
            continue;
        }
        if entry.size() > MAX_TOC_BYTES {
            return Err(format!(
                "TOC of {} bytes is over the {MAX_TOC_BYTES}-byte cap",
                entry.size()
            ));
        }
        let mut json = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut json).map_err(|e| format!("TOC: {e}"))?;
        if let Some(expected) = expected {
            let actual = Digest::of(&json);
            if &actual != expected {
                return Err(format!(
                    "TOC digest mismatch: annotation says {expected}, TOC is {actual}"
                ));
            }
        }
        return serde_json::from_slice(&json).map_err(|e| format!("TOC is not valid JSON: {e}"));
    }
    Err(format!("no {TOC_NAME} entry where the footer points"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// The 51-byte footer for `toc_offset`, built from the spec.
    pub fn footer(toc_offset: u64) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .extra(
                [
                    b"SG".as_slice(),
                    &22u16.to_le_bytes(),
                    format!("{toc_offset:016x}STARGZ").as_bytes(),
                ]
                .concat(),
            )
            .write(Vec::new(), flate2::Compression::none());
        e.write_all(b"").unwrap();
        let mut f = e.finish().unwrap();
        f[9] = 0xff; // OS unknown, as the spec writes it
        f
    }

    #[test]
    fn footer_round_trip() {
        let f = footer(0x1234);
        assert_eq!(f.len(), FOOTER_BYTES);
        let mut tail = vec![7u8; 100];
        tail.extend_from_slice(&f);
        assert_eq!(parse_footer(&tail), Some((0x1234, FOOTER_BYTES)));
        assert_eq!(parse_footer(&tail[..100]), None);
        let mut bad = f.clone();
        bad[20] = b'z';
        assert_eq!(parse_footer(&bad), None);
    }
}
