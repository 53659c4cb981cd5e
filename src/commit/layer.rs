//! An upper directory (kernel overlayfs format) as an OCI layer tar.
//!
//! ```text
//! upper entry                          layer entry
//! 0/0 character device NAME        ──► empty file .wh.NAME
//! dir, trusted.overlay.opaque=y    ──► dir + DIR/.wh..wh..opq, then its upper entries
//! dir, trusted.overlay.redirect    ──► dir + DIR/.wh..wh..opq, then everything the merged
//!                                      view shows under it (the moved lower entries too)
//! anything else                    ──► the entry (xattrs as SCHILY.xattr PAX records;
//!                                      regular files seen before under another name as
//!                                      hard links to that name)
//! ```
//!
//! Where a merged view (the mountpoint) is given, entries' metadata and bytes are read
//! through it, so inode numbers (hence hard-link groups) come from one place. Every open is
//! relative to a directory fd with `O_NOFOLLOW`: a symlink in the upper or in the view is
//! stored as a symlink and never followed. Names are sorted, so the same tree gives the same
//! tar.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::upper;

/// Prefix of an OCI whiteout.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// overlayfs' redirect xattr.
const REDIRECT: &str = "trusted.overlay.redirect";

/// What went into the layer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// Entries written (markers included).
    pub entries: u64,
    /// Whiteouts written.
    pub whiteouts: u64,
    /// Opaque-directory markers written (for opaque and for moved directories).
    pub opaque_dirs: u64,
    /// Bytes of regular files.
    pub file_bytes: u64,
    /// Sockets left out (a tar cannot hold them).
    pub skipped_sockets: u64,
}

/// The upper directory holds moved directories, whose lower contents only a merged view has.
#[derive(Debug, thiserror::Error)]
#[error("{0}: a moved directory or a metacopy file; what it holds from below is only in the merged view")]
pub struct NeedsView(pub String);

/// Whether the upper root `root` holds what only a merged view can complete: a moved
/// directory (redirect) or a file whose bytes are still below (metacopy).
pub fn needs_view(root: BorrowedFd<'_>) -> io::Result<bool> {
    for (name, st) in entries(root)? {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let d = open_dir(root, &name)?;
                if upper::get_xattr(&upper::xattr_path(d.as_fd(), b""), REDIRECT)?.is_some() || needs_view(d.as_fd())? {
                    return Ok(true);
                }
            }
            FileType::RegularFile if is_metacopy(root, &name)? => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

fn is_metacopy(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    Ok(upper::get_xattr(&upper::xattr_path(dir, name), upper::METACOPY)?.is_some())
}

/// Write the layer for the upper root `upper_root` to `out` (a tar, not compressed).
/// `view` is the merged view's root; it is needed when the upper has moved directories.
pub fn write_layer<W: Write>(
    upper_root: BorrowedFd<'_>,
    view: Option<BorrowedFd<'_>>,
    out: W,
) -> io::Result<(W, LayerSummary)> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut w = Walker {
        tar,
        links: HashMap::new(),
        summary: LayerSummary::default(),
    };
    w.upper_dir(upper_root, view, &[])?;
    let summary = w.summary;
    Ok((w.tar.into_inner()?, summary))
}

struct Walker<W: Write> {
    tar: tar::Builder<W>,
    /// (dev, ino) of regular files with several names → the first name written.
    links: HashMap<(u64, u64), Vec<u8>>,
    summary: LayerSummary,
}

fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A directory's entries with their (not followed) stats, sorted by name.
fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, rustix::fs::Stat)>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push((name.to_vec(), st)),
            Err(rustix::io::Errno::NOENT) => {} // gone meanwhile
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

fn os(bytes: &[u8]) -> &std::path::Path {
    std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes))
}

fn header_from(st: &rustix::fs::Stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

impl<W: Write> Walker<W> {
    /// Entries of an upper directory (and, if given, the same directory in the view).
    fn upper_dir(&mut self, upper_dir: BorrowedFd<'_>, view: Option<BorrowedFd<'_>>, rel: &[u8]) -> io::Result<()> {
        for (name, ust) in entries(upper_dir)? {
            let path = join(rel, &name);
            if upper::is_whiteout(&ust) {
                let mut h = header_from(&ust, tar::EntryType::Regular);
                h.set_mode(0o644);
                let parent_rel = rel;
                self.tar.append_data(
                    &mut h,
                    os(&join(parent_rel, &[WHITEOUT_PREFIX, &name].concat())),
                    io::empty(),
                )?;
                self.summary.entries += 1;
                self.summary.whiteouts += 1;
                continue;
            }
            // Metadata and bytes from the view where there is one.
            let (src, st) = match view {
                Some(v) => match rustix::fs::statat(v, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => (v, st),
                    // Not in the merged view: the upper changed under us; the view is the truth.
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                },
                None => (upper_dir, ust),
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory
                && FileType::from_raw_mode(ust.st_mode) == FileType::Directory
            {
                let child_upper = open_dir(upper_dir, &name)?;
                let child_view = view.map(|v| open_dir(v, &name)).transpose()?;
                let marks = upper::xattr_path(child_upper.as_fd(), b"");
                let moved = upper::get_xattr(&marks, REDIRECT)?.is_some();
                let opaque = upper::is_opaque(child_upper.as_fd());
                self.entry(src, &name, &path, &st)?;
                if moved {
                    let Some(cv) = child_view.as_ref() else {
                        return Err(io::Error::other(NeedsView(String::from_utf8_lossy(&path).into_owned())));
                    };
                    self.opaque_marker(&path, &st)?;
                    self.view_dir(cv.as_fd(), &path)?;
                } else {
                    if opaque {
                        self.opaque_marker(&path, &st)?;
                    }
                    self.upper_dir(child_upper.as_fd(), child_view.as_ref().map(|v| v.as_fd()), &path)?;
                }
            } else {
                if view.is_none()
                    && FileType::from_raw_mode(ust.st_mode) == FileType::RegularFile
                    && is_metacopy(upper_dir, &name)?
                {
                    return Err(io::Error::other(NeedsView(String::from_utf8_lossy(&path).into_owned())));
                }
                self.entry(src, &name, &path, &st)?;
            }
        }
        Ok(())
    }

    /// Everything under a directory of the merged view.
    fn view_dir(&mut self, dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
        for (name, st) in entries(dir)? {
            let path = join(rel, &name);
            self.entry(dir, &name, &path, &st)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let child = open_dir(dir, &name)?;
                self.view_dir(child.as_fd(), &path)?;
            }
        }
        Ok(())
    }

    fn opaque_marker(&mut self, dir_path: &[u8], dir_st: &rustix::fs::Stat) -> io::Result<()> {
        let mut h = header_from(dir_st, tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        self.tar
            .append_data(&mut h, os(&join(dir_path, OPAQUE_MARKER)), io::empty())?;
        self.summary.entries += 1;
        self.summary.opaque_dirs += 1;
        Ok(())
    }

    /// One entry (not its children): `name` in `dir`, stored at `path`.
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &[u8], path: &[u8], st: &rustix::fs::Stat) -> io::Result<()> {
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Socket {
            tracing::warn!(path = %String::from_utf8_lossy(path), "a socket cannot be stored in a layer; left out");
            self.summary.skipped_sockets += 1;
            return Ok(());
        }
        let xattrs = upper::xattrs(&upper::xattr_path(dir, name))?;
        if !xattrs.is_empty() {
            let mut records = Vec::with_capacity(xattrs.len());
            for (k, v) in &xattrs {
                let k = std::str::from_utf8(k).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: an xattr name that is not UTF-8", String::from_utf8_lossy(path)),
                    )
                })?;
                records.push((format!("SCHILY.xattr.{k}"), v.as_slice()));
            }
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let p = os(path);
        match kind {
            FileType::Directory => {
                let mut h = header_from(st, tar::EntryType::Directory);
                self.tar.append_data(&mut h, p, io::empty())?;
            }
            FileType::RegularFile => {
                let id = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&id) {
                        let mut h = header_from(st, tar::EntryType::Link);
                        self.tar.append_link(&mut h, p, os(first))?;
                        self.summary.entries += 1;
                        return Ok(());
                    }
                    self.links.insert(id, path.to_vec());
                }
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let file = std::fs::File::from(fd);
                let len = file.metadata()?.len();
                let mut h = header_from(st, tar::EntryType::Regular);
                h.set_size(len);
                // Exactly `len` bytes: a file that changes size meanwhile fails the commit
                // instead of writing a tar whose header and data disagree.
                let mut data = std::io::Read::take(file, len);
                self.tar.append_data(&mut h, p, &mut data)?;
                if data.limit() != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: shrank while being committed", String::from_utf8_lossy(path)),
                    ));
                }
                self.summary.file_bytes += len;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
                let mut h = header_from(st, tar::EntryType::Symlink);
                self.tar.append_link(&mut h, p, os(target.as_bytes()))?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                let t = match kind {
                    FileType::CharacterDevice => tar::EntryType::Char,
                    FileType::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                let mut h = header_from(st, t);
                if kind != FileType::Fifo {
                    h.set_device_major(rustix::fs::major(st.st_rdev))?;
                    h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
                }
                self.tar.append_data(&mut h, p, io::empty())?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: unknown file type", String::from_utf8_lossy(path)),
                ))
            }
        }
        self.summary.entries += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upper::tests::require_root;

    fn names(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    link,
                )
            })
            .collect()
    }

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    #[test]
    fn whiteouts_links_and_symlinks_become_oci_entries() {
        if !require_root("whiteouts (0/0 character devices) need root") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path();
        std::fs::create_dir_all(u.join("etc/sub")).unwrap();
        std::fs::write(u.join("etc/a"), b"hello").unwrap();
        std::fs::hard_link(u.join("etc/a"), u.join("etc/sub/b")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", u.join("etc/link")).unwrap();
        let etc = open(&u.join("etc"));
        upper::make_whiteout(etc.as_fd(), b"gone").unwrap();
        let (tar_bytes, summary) = write_layer(open(u).as_fd(), None, Vec::new()).unwrap();
        let got = names(&tar_bytes);
        let want = [
            ("etc", tar::EntryType::Directory, ""),
            ("etc/a", tar::EntryType::Regular, ""),
            ("etc/.wh.gone", tar::EntryType::Regular, ""),
            ("etc/link", tar::EntryType::Symlink, "/etc/passwd"),
            ("etc/sub", tar::EntryType::Directory, ""),
            ("etc/sub/b", tar::EntryType::Link, "etc/a"),
        ];
        let got: Vec<(&str, tar::EntryType, &str)> = got
            .iter()
            .map(|(p, k, l)| (p.trim_end_matches('/'), *k, l.as_str()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(summary.whiteouts, 1);
        assert_eq!(summary.file_bytes, 5);
    }

    #[test]
    fn opaque_dirs_get_a_marker_and_moved_dirs_need_the_view() {
        if !require_root("trusted.* xattrs need root") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        let v = t.path().join("view");
        std::fs::create_dir_all(u.join("o")).unwrap();
        std::fs::create_dir_all(u.join("m")).unwrap();
        std::fs::write(u.join("o/new"), b"x").unwrap();
        let root = open(&u);
        upper::set_marker(root.as_fd(), b"o", "trusted.overlay.opaque", b"y").unwrap();
        assert!(!needs_view(root.as_fd()).unwrap());
        upper::set_marker(root.as_fd(), b"m", REDIRECT, b"/old").unwrap();
        assert!(needs_view(root.as_fd()).unwrap());
        let e = write_layer(root.as_fd(), None, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("moved directory"), "{e}");
        // A metacopy file needs it too.
        std::fs::write(u.join("o/meta"), b"").unwrap();
        let o = open(&u.join("o"));
        upper::set_marker(o.as_fd(), b"meta", upper::METACOPY, b"").unwrap();
        drop(o);
        // The view: what the mount shows (here a plain tree standing in for it).
        std::fs::create_dir_all(v.join("o")).unwrap();
        std::fs::create_dir_all(v.join("m/deep")).unwrap();
        std::fs::write(v.join("o/new"), b"x").unwrap();
        std::fs::write(v.join("m/deep/lower-file"), b"from below").unwrap();
        let (tar_bytes, summary) = write_layer(root.as_fd(), Some(open(&v).as_fd()), Vec::new()).unwrap();
        let got: Vec<String> = names(&tar_bytes)
            .into_iter()
            .map(|(p, _, _)| p.trim_end_matches('/').to_string())
            .collect();
        assert_eq!(
            got,
            [
                "m",
                "m/.wh..wh..opq",
                "m/deep",
                "m/deep/lower-file",
                "o",
                "o/.wh..wh..opq",
                "o/new"
            ]
        );
        assert_eq!(summary.opaque_dirs, 2);
    }
}
