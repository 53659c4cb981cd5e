//! The metadata of one tar entry, with PAX records (`uid`, `gid`, `mtime`,
//! `SCHILY.xattr.*`) applied on top of the header fields. The `tar` crate parses the headers,
//! long names and sizes; this module decides what lamina keeps of them.

use std::io;

use crate::model::entry::{MAX_XATTRS_PER_ENTRY, MAX_XATTR_VALUE_BYTES};
use crate::model::{EntryKind, Meta};

/// One tar entry as read: its raw path and its [`Meta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Raw path bytes (long names resolved), not yet normalized.
    pub path: Vec<u8>,
    /// Kind, mode, owner, mtime, size, link target (empty if none), device, xattrs.
    pub meta: Meta,
}

crate::extends_meta!(TarEntry);

/// Whether a tar entry type carries no object of its own (PAX/GNU metadata headers).
pub fn is_metadata_only(t: tar::EntryType) -> bool {
    matches!(
        t,
        tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
    )
}

/// Read an entry's metadata. Unknown entry types are an error naming the type.
pub fn entry_meta<R: io::Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<TarEntry> {
    let header = entry.header();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => EntryKind::Regular,
        tar::EntryType::Directory => EntryKind::Directory,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::HardLink,
        tar::EntryType::Char => EntryKind::CharDevice,
        tar::EntryType::Block => EntryKind::BlockDevice,
        tar::EntryType::Fifo => EntryKind::Fifo,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported tar entry type {:?}", other.as_byte() as char),
            ))
        }
    };
    let mut meta = TarEntry {
        path: entry.path_bytes().into_owned(),
        meta: Meta {
            kind,
            mode: header.mode()? & 0o7777,
            uid: clamp_id(header.uid()?),
            gid: clamp_id(header.gid()?),
            mtime_secs: header.mtime()? as i64,
            mtime_nanos: 0,
            size: entry.size(),
            link: entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        },
    };
    if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
        meta.dev_major = header.device_major()?.unwrap_or(0);
        meta.dev_minor = header.device_minor()?.unwrap_or(0);
    }
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            apply_pax(&mut meta, ext.key_bytes(), ext.value_bytes())?;
        }
    }
    Ok(meta)
}

fn apply_pax(meta: &mut TarEntry, key: &[u8], value: &[u8]) -> io::Result<()> {
    let text = || std::str::from_utf8(value).ok().map(str::trim);
    match key {
        b"uid" => meta.uid = text().and_then(|t| t.parse().ok()).map(clamp_id).unwrap_or(meta.uid),
        b"gid" => meta.gid = text().and_then(|t| t.parse().ok()).map(clamp_id).unwrap_or(meta.gid),
        b"mtime" => {
            if let Some((s, n)) = text().and_then(parse_pax_time) {
                meta.mtime_secs = s;
                meta.mtime_nanos = n;
            }
        }
        k => {
            if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                if value.len() > MAX_XATTR_VALUE_BYTES || meta.xattrs.len() >= MAX_XATTRS_PER_ENTRY || name.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "xattr too large or too many",
                    ));
                }
                meta.xattrs.push((name.to_vec(), value.to_vec()));
            }
        }
    }
    Ok(())
}

/// Owners beyond 32 bits cannot exist on Linux; keep the low bits rather than fail.
fn clamp_id(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

/// `1700000000.123456789` → (1700000000, 123456789); negative times allowed.
pub fn parse_pax_time(t: &str) -> Option<(i64, u32)> {
    let (s, frac) = t.split_once('.').unwrap_or((t, ""));
    let secs: i64 = s.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: u32 = digits.parse().ok()?;
    // A negative time with a fraction means secs - fraction.
    if secs < 0 || s.starts_with('-') {
        if nanos == 0 {
            return Some((secs, 0));
        }
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let cases = [
            ("1700000000", Some((1700000000, 0))),
            ("1700000000.5", Some((1700000000, 500_000_000))),
            ("1700000000.123456789123", Some((1700000000, 123_456_789))),
            ("-1.5", Some((-2, 500_000_000))),
            ("x", None),
            ("1.x", None),
        ];
        for (t, want) in cases {
            assert_eq!(parse_pax_time(t), want, "{t}");
        }
    }
}
