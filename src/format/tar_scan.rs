//! A raw tar scanner for re-encoding: it hands out every byte of the stream exactly once —
//! header blocks (PAX and GNU long-name headers included) as raw bytes, file payloads as a
//! bounded reader — so a writer can keep the uncompressed stream byte-identical.

use std::io::{self, Read};

/// Tar block size.
pub const BLOCK: usize = 512;
/// Largest PAX or GNU long-name payload accepted.
pub const MAX_META_PAYLOAD_BYTES: u64 = 16 << 20;

/// What the scanner found next.
pub enum Scanned {
    /// An entry: its raw header bytes (extended headers first) and parsed fields. Its payload
    /// (`size` bytes, then padding) is still to be read from the scanner.
    Entry(ScannedEntry),
    /// The end-of-archive block and everything after it, raw.
    End(Vec<u8>),
}

/// One entry's header fields, extended headers applied.
pub struct ScannedEntry {
    /// Raw bytes of the entry's header blocks.
    pub raw: Vec<u8>,
    /// Type flag byte.
    pub typeflag: u8,
    /// Full name.
    pub name: Vec<u8>,
    /// Link target.
    pub link_name: Vec<u8>,
    /// Payload size.
    pub size: u64,
    /// Mode field.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Device numbers.
    pub dev: (u32, u32),
    /// `SCHILY.xattr.*` records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a tar stream entry by entry.
pub struct TarScanner<R> {
    input: R,
}

impl<R: Read> TarScanner<R> {
    /// Scan `input`.
    pub fn new(input: R) -> Self {
        TarScanner { input }
    }

    /// The underlying reader, given back.
    pub fn into_inner(self) -> R {
        self.input
    }

    /// The underlying reader, for the current entry's payload.
    pub fn input(&mut self) -> &mut R {
        &mut self.input
    }

    /// The next entry, or the end.
    pub fn next_entry(&mut self) -> io::Result<Scanned> {
        let mut raw = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let mut block = [0u8; BLOCK];
            self.input
                .read_exact(&mut block)
                .map_err(|e| invalid(format!("truncated tar header: {e}")))?;
            raw.extend_from_slice(&block);
            if block.iter().all(|b| *b == 0) {
                self.input.read_to_end(&mut raw)?;
                return Ok(Scanned::End(raw));
            }
            let header = tar::Header::from_byte_slice(&block);
            check_checksum(header)?;
            let size = header
                .entry_size()
                .map_err(|e| invalid(format!("bad size field: {e}")))?;
            let typeflag = block[156];
            if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
                if size > MAX_META_PAYLOAD_BYTES {
                    return Err(invalid(format!("extended header of {size} bytes")));
                }
                let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                let start = raw.len();
                (&mut self.input).take(padded).read_to_end(&mut raw)?;
                if (raw.len() - start) as u64 != padded {
                    return Err(invalid("truncated extended header"));
                }
                let payload = raw[start..start + size as usize].to_vec();
                match typeflag {
                    b'x' => pax.extend(parse_pax(&payload)?),
                    b'L' => long_name = Some(trim_nul(&payload)),
                    b'K' => long_link = Some(trim_nul(&payload)),
                    _ => {} // global headers pass through untouched
                }
                continue;
            }
            return Ok(Scanned::Entry(entry_from(
                header, typeflag, size, raw, long_name, long_link, pax,
            )?));
        }
    }
}

fn entry_from(
    header: &tar::Header,
    typeflag: u8,
    mut size: u64,
    raw: Vec<u8>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
) -> io::Result<ScannedEntry> {
    let mut name = long_name.unwrap_or_else(|| header.path_bytes().into_owned());
    let mut link_name =
        long_link.unwrap_or_else(|| header.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default());
    let mut uid = header.uid().unwrap_or(0);
    let mut gid = header.gid().unwrap_or(0);
    let mut mtime = (header.mtime().unwrap_or(0) as i64, 0u32);
    let mut xattrs = Vec::new();
    for (k, v) in pax {
        let text = || std::str::from_utf8(&v).ok().map(str::trim).map(str::to_string);
        match k.as_slice() {
            b"path" => name = v,
            b"linkpath" => link_name = v,
            b"size" => {
                size = text()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| invalid("bad PAX size"))?
            }
            b"uid" => uid = text().and_then(|t| t.parse().ok()).unwrap_or(uid),
            b"gid" => gid = text().and_then(|t| t.parse().ok()).unwrap_or(gid),
            b"mtime" => mtime = text().and_then(|t| super::tar::parse_pax_time(&t)).unwrap_or(mtime),
            _ => {
                if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((x.to_vec(), v));
                }
            }
        }
    }
    let dev = if matches!(typeflag, b'3' | b'4') {
        (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    Ok(ScannedEntry {
        raw,
        typeflag,
        name,
        link_name,
        size,
        mode: header.mode().unwrap_or(0),
        uid,
        gid,
        mtime,
        dev,
        xattrs,
    })
}

fn check_checksum(h: &tar::Header) -> io::Result<()> {
    let stored = h.as_old().cksum;
    let expected = tar_octal(&stored).ok_or_else(|| invalid("bad header checksum field"))?;
    let bytes = h.as_bytes();
    let sum: u64 = bytes[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&bytes[156..])
        .map(|b| *b as u64)
        .sum();
    if sum != expected {
        return Err(invalid(format!("tar header checksum mismatch ({sum} != {expected})")));
    }
    Ok(())
}

fn tar_octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field)
        .ok()?
        .trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(s, 8).ok()
}

fn trim_nul(b: &[u8]) -> Vec<u8> {
    b.split(|c| *c == 0).next().unwrap_or_default().to_vec()
}

/// `"LEN KEY=VALUE\n"` records.
pub fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| invalid("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad PAX record length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("bad PAX record length"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| invalid("PAX record without '='"))?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records() {
        let r = parse_pax(b"16 path=a/b/cde\n20 SCHILY.xattr.k=v\n").unwrap();
        assert_eq!(
            r,
            vec![
                (b"path".to_vec(), b"a/b/cde".to_vec()),
                (b"SCHILY.xattr.k".to_vec(), b"v".to_vec())
            ]
        );
        for bad in [&b"5 a=b\n"[..], b"99 a=b\n", b"x a=b\n", b"7 ab\n", b"6 a=bc"] {
            assert!(parse_pax(bad).is_err(), "{bad:?}");
        }
    }
}
