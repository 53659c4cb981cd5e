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
        return super::toc::parse(&json);
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

    fn gzip_member(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn tar_header(name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// An eStargz blob built from the spec: a member per payload chunk, the TOC as the last tar
    /// entry in its own member, then the footer.
    fn build(files: &[(&str, Vec<u8>, usize)]) -> (Vec<u8>, Digest) {
        let mut blob = Vec::new();
        let mut entries = Vec::new();
        for (name, data, chunk) in files {
            blob.extend(gzip_member(&tar_header(name, data.len() as u64)));
            let digest = Digest::of(data).to_string();
            for (i, piece) in data.chunks(*chunk).enumerate() {
                let offset = blob.len();
                let mut member = piece.to_vec();
                if (i + 1) * chunk >= data.len() {
                    member.resize(member.len() + (512 - data.len() % 512) % 512, 0);
                }
                blob.extend(gzip_member(&member));
                let mut e = serde_json::json!({
                    "type": if i == 0 { "reg" } else { "chunk" }, "name": name, "offset": offset,
                    "chunkOffset": i * chunk, "chunkSize": piece.len(), "chunkDigest": Digest::of(piece).to_string(),
                });
                if i == 0 {
                    e["size"] = data.len().into();
                    e["digest"] = digest.clone().into();
                    e["modtime"] = "2023-11-14T22:13:20Z".into();
                }
                entries.push(e);
            }
        }
        let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
        let toc_offset = blob.len() as u64;
        let mut toc_tar = tar_header(TOC_NAME, json.len() as u64);
        toc_tar.extend_from_slice(&json);
        toc_tar.resize(toc_tar.len().div_ceil(512) * 512 + 1024, 0);
        blob.extend(gzip_member(&toc_tar));
        blob.extend(footer(toc_offset));
        (blob, Digest::of(&json))
    }

    #[test]
    fn spec_built_blob_reads_back() {
        use crate::format::chunk::decode_chunk;
        use crate::format::toc::{to_index, Dialect};
        use crate::model::ChunkCodec;
        let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files = [("etc/small", b"hello".to_vec(), 4096), ("usr/big", big.clone(), 4000)];
        let (blob, toc_digest) = build(&files);
        let (toc_offset, footer_len) = parse_footer(&blob).unwrap();
        let member = &blob[toc_offset as usize..blob.len() - footer_len];
        assert!(decode_toc(member, Some(&Digest::of(b"other")))
            .unwrap_err()
            .contains("digest mismatch"));
        let toc = decode_toc(member, Some(&toc_digest)).unwrap();
        let index = to_index("sha256:x", &toc, blob.len() as u64, Dialect::Estargz { toc_offset }).unwrap();
        assert_eq!(index.codec, ChunkCodec::Gzip);
        assert_eq!(index.entries.len(), 2);
        assert_eq!(index.chunks_of(&index.entries[1]).len(), 3);
        for (entry, (_, want, _)) in index.entries.iter().zip(&files) {
            let mut got = Vec::new();
            for c in index.chunks_of(entry) {
                let raw = &blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize];
                got.extend(decode_chunk(ChunkCodec::Gzip, c, raw).unwrap());
            }
            assert_eq!(&got, want, "{}", entry.path);
        }
        // A flipped byte inside a payload member is caught by the chunk digest.
        let c = &index.chunks[1];
        let mut bad = blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize].to_vec();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(decode_chunk(ChunkCodec::Gzip, c, &bad).is_err());
    }
}
