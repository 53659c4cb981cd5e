//! The decompressed stream of a layer blob. The compression is read from the first bytes
//! (some registries' media types lie); the declared one only decides for an empty blob.

use std::io::{self, BufReader, Read};

use crate::oci::Compression;

/// Read size for decompression.
const BUFFER_BYTES: usize = 256 * 1024;

/// What the first bytes of a blob say it is.
pub fn sniff(head: &[u8], declared: Compression) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        // A zstd stream may open with a skippable frame (magic 0x184D2A50..5F, little endian).
        [m, 0x2a, 0x4d, 0x18, ..] if (0x50..=0x5f).contains(m) => Compression::Zstd,
        _ if head.len() < 4 => declared,
        _ => Compression::None,
    }
}

/// Wrap `reader` (a whole blob from its first byte) in the decompressor its bytes call for.
pub fn decompressor<R: Read + Send + 'static>(
    mut reader: R,
    declared: Compression,
) -> io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = reader.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let found = sniff(&magic[..got], declared);
    if found != declared {
        tracing::debug!(?declared, ?found, "layer compression differs from its media type");
    }
    let stream = BufReader::with_capacity(BUFFER_BYTES, io::Cursor::new(magic[..got].to_vec()).chain(reader));
    Ok(match found {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(stream)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_cases() {
        let cases: [(&[u8], Compression); 6] = [
            (&[0x1f, 0x8b, 8, 0], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0x50, 0x2a, 0x4d, 0x18], Compression::Zstd),
            (b"etc/", Compression::None),
            (b"", Compression::Gzip),
            (&[0x1f], Compression::Gzip),
        ];
        for (head, want) in cases {
            assert_eq!(sniff(head, Compression::Gzip), want, "{head:?}");
        }
    }
}
