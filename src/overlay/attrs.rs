//! The writable mount's metadata operations: link, setattr (metadata-only copy-up), xattrs,
//! directory handles and listings, fsyncdir.

use std::os::fd::{AsFd, OwnedFd};

use fuser::{FileAttr, FileType};
use rustix::fs::{AtFlags, Mode, Timestamps};
use rustix::io::Errno;

use super::{OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;
use crate::union::ROOT_INO;
use crate::upper::{self, is_whiteout, stat_at};

use super::data::check_write_open;
use super::ops::{check_new_name, time_arg, AttrChange};

/// `FS_IOC_GETFLAGS` and `FS_IOC_SETFLAGS` (`_IOR('f', 1, long)`, `_IOW('f', 2, long)`; the
/// kernel passes an int).
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`).
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;

/// `struct fsxattr` (28 bytes) for inode flags `flags`: the flags that have an `FS_XFLAG_*`
/// twin, mapped as the kernel's `fileattr_fill_flags` maps them; no extent size nor project.
fn fsxattr_of(flags: u32) -> [u8; 28] {
    const TWINS: [(u32, u32); 7] = [
        (0x08, 0x20),          // SYNC
        (0x10, 0x08),          // IMMUTABLE
        (0x20, 0x10),          // APPEND
        (0x40, 0x80),          // NODUMP
        (0x80, 0x40),          // NOATIME
        (0x0200_0000, 0x8000), // DAX
        (0x2000_0000, 0x200),  // PROJINHERIT
    ];
    let xflags = TWINS.iter().filter(|(f, _)| flags & f != 0).fold(0, |x, (_, t)| x | t);
    let mut out = [0u8; 28];
    out[..4].copy_from_slice(&u32::to_ne_bytes(xflags));
    out
}

/// Where kernel overlayfs (≥ 5.15) records an object's immutable/append-only flags.
const PROTATTR: &str = "trusted.overlay.protattr";
/// `FS_APPEND_FL`, `FS_IMMUTABLE_FL`.
const APPEND_FL: u32 = 0x20;
const IMMUTABLE_FL: u32 = 0x10;

/// Inode flags `flags` on the upper object `fd`, with immutable/append-only also recorded
/// as kernel overlayfs records them (`trusted.overlay.protattr`, `"a"`, `"i"` or `"ai"`), so
/// that kernel overlayfs over the upper shows and enforces them. A flagged inode takes no
/// xattr change: its protection flags go first, the record changes, the new flags come last.
fn set_flags_and_protattr(fd: &OwnedFd, flags: u32) -> Result<()> {
    use rustix::fs::IFlags;
    let prot = APPEND_FL | IMMUTABLE_FL;
    let now = rustix::fs::ioctl_getflags(fd)?.bits();
    if now & prot != 0 {
        rustix::fs::ioctl_setflags(fd, IFlags::from_bits_retain(now & !prot))?;
    }
    let record: Vec<u8> = [(APPEND_FL, b'a'), (IMMUTABLE_FL, b'i')]
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, c)| *c)
        .collect();
    if record.is_empty() {
        match rustix::fs::fremovexattr(fd, PROTATTR) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        rustix::fs::fsetxattr(fd, PROTATTR, &record, rustix::fs::XattrFlags::empty())?;
    }
    rustix::fs::ioctl_setflags(fd, IFlags::from_bits_retain(flags))?;
    Ok(())
}

impl OverlayFs {
    /// `link`
    pub fn op_link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<FileAttr> {
        check_new_name(newname)?;
        self.locked(|st| {
            if self.node(st, ino)?.kind == EntryKind::Directory {
                return Err(Errno::PERM.into());
            }
            if self.resolve(st, newparent, newname)?.is_some() {
                return Err(Errno::EXIST.into());
            }
            self.copy_up(st, ino, true)?;
            self.copy_up(st, newparent, true)?;
            let (sdir, sname) = self.upper_entry(st, ino)?;
            let ddir = self.upper_dir(st, newparent)?;
            match stat_at(ddir.as_fd(), newname)? {
                Some(s) if is_whiteout(&s) => {
                    let (scratch, tname) = self.upper.scratch();
                    rustix::fs::linkat(&sdir, sname.as_slice(), scratch, tname.as_str(), AtFlags::empty())?;
                    rustix::fs::renameat(scratch, tname.as_str(), &ddir, newname)?;
                }
                Some(_) => return Err(Errno::EXIST.into()),
                None => rustix::fs::linkat(&sdir, sname.as_slice(), &ddir, newname, AtFlags::empty())?,
            }
            st.nodes.add_name(ino, newparent, newname);
            let attr = self.attr(st, ino)?;
            st.nodes.looked_up(ino);
            Ok(attr)
        })
    }

    /// `setattr`: chmod, chown, truncate, utimens (after copy-up).
    pub fn op_setattr(&self, ino: u64, c: &AttrChange) -> Result<FileAttr> {
        self.locked(|st| {
            match c.size {
                // Metadata only: the bytes can stay below.
                None => self.copy_up_meta(st, ino)?,
                // Truncating to nothing needs none of the old bytes.
                Some(size) => self.copy_up(st, ino, size != 0)?,
            }
            if let Some(fd) = self.node(st, ino)?.fd.clone() {
                // An open upper file (tar's fchown, fchmod, futimens after writing): its
                // descriptor, no path walk.
                if c.size.is_some() {
                    check_write_open(&fd, 0)?;
                }
                Self::setattr_fd(&fd, c)?;
                return self.attr(st, ino);
            }
            let (dir, name) = self.upper_entry(st, ino)?;
            let kind = self.node(st, ino)?.kind;
            let at = |f: &dyn Fn(std::os::fd::BorrowedFd<'_>, &[u8]) -> rustix::io::Result<()>| -> Result<()> {
                if name.is_empty() {
                    // The root: act on the directory itself.
                    Ok(f(dir.as_fd(), b".")?)
                } else {
                    Ok(f(dir.as_fd(), &name)?)
                }
            };
            if c.uid.is_some() || c.gid.is_some() || c.is_empty() {
                // An empty change (`chown(f, -1, -1)`) still moves ctime, as the kernel's.
                at(&|d, n| {
                    rustix::fs::chownat(
                        d,
                        n,
                        c.uid.map(rustix::fs::Uid::from_raw),
                        c.gid.map(rustix::fs::Gid::from_raw),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            if let Some(mode) = c.mode {
                if kind != EntryKind::Symlink {
                    at(&|d, n| rustix::fs::chmodat(d, n, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty()))?;
                }
            }
            if let Some(size) = c.size {
                if kind != EntryKind::Regular {
                    return Err(Errno::INVAL.into());
                }
                let fd = self.file_fd(st, ino)?;
                check_write_open(&fd, 0)?;
                rustix::fs::ftruncate(&*fd, size)?;
            }
            if c.atime.is_some() || c.mtime.is_some() {
                let times = Timestamps {
                    last_access: time_arg(c.atime),
                    last_modification: time_arg(c.mtime),
                };
                at(&|d, n| rustix::fs::utimensat(d, n, &times, AtFlags::SYMLINK_NOFOLLOW))?;
            }
            self.attr(st, ino)
        })
    }

    /// The changes `c` on the open upper regular file `fd`, in `setattr`'s order.
    fn setattr_fd(fd: &OwnedFd, c: &AttrChange) -> Result<()> {
        if c.uid.is_some() || c.gid.is_some() || c.is_empty() {
            rustix::fs::fchown(
                fd,
                c.uid.map(rustix::fs::Uid::from_raw),
                c.gid.map(rustix::fs::Gid::from_raw),
            )?;
        }
        if let Some(mode) = c.mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
        }
        if let Some(size) = c.size {
            rustix::fs::ftruncate(fd, size)?;
        }
        if c.atime.is_some() || c.mtime.is_some() {
            let times = Timestamps {
                last_access: time_arg(c.atime),
                last_modification: time_arg(c.mtime),
            };
            rustix::fs::futimens(fd, &times)?;
        }
        Ok(())
    }

    /// `ioctl`: chattr/lsattr (the kernel sends these for regular files and directories);
    /// the bytes to give back, or None for a command not handled here.
    pub fn op_ioctl(&self, ino: u64, cmd: u32, in_data: &[u8]) -> Option<Result<Vec<u8>>> {
        Some(match cmd {
            FS_IOC_GETFLAGS => self.op_getflags(ino).map(|f| f.to_ne_bytes().to_vec()),
            // What the kernel asks before a SETFLAGS, to see which flags change.
            FS_IOC_FSGETXATTR => self.op_getflags(ino).map(|f| fsxattr_of(f).to_vec()),
            // (`_IOW`: the kernel takes no bytes back.)
            FS_IOC_SETFLAGS => match in_data.get(..4) {
                Some(b) => self
                    .op_setflags(ino, u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .map(|()| Vec::new()),
                None => Err(Errno::INVAL.into()),
            },
            _ => return None,
        })
    }

    /// `FS_IOC_GETFLAGS`: the upper object's inode flags (`chattr`'s); a lower object has none.
    pub fn op_getflags(&self, ino: u64) -> Result<u32> {
        self.locked(|st| {
            if !self.node(st, ino)?.upper {
                return Ok(0);
            }
            Ok(rustix::fs::ioctl_getflags(self.flags_fd(st, ino)?)?.bits())
        })
    }

    /// `FS_IOC_SETFLAGS` (the kernel has checked the caller may): copy up, then set them on the
    /// upper object, where its file system keeps and enforces them (immutable, append-only)
    /// as it does for kernel overlayfs (handles open before keep their access, as there).
    pub fn op_setflags(&self, ino: u64, flags: u32) -> Result<()> {
        self.locked(|st| {
            let kind = self.node(st, ino)?.kind;
            if kind != EntryKind::Regular && kind != EntryKind::Directory {
                return Err(Errno::NOTTY.into());
            }
            self.copy_up(st, ino, true)?;
            set_flags_and_protattr(&self.flags_fd(st, ino)?, flags)
        })
    }

    /// A read-only descriptor of upper object `ino` for the flags ioctls.
    fn flags_fd(&self, st: &State, ino: u64) -> Result<OwnedFd> {
        let (dir, name) = self.upper_entry(st, ino)?;
        let name: &[u8] = if name.is_empty() { b"." } else { &name };
        let how = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC;
        Ok(rustix::fs::openat(&dir, name, how, Mode::empty())?)
    }

    /// `setxattr` (`value` Some) and `removexattr` (None).
    pub fn op_setxattr(&self, ino: u64, key: &[u8], value: Option<(&[u8], i32)>) -> Result<()> {
        if key.starts_with(upper::PRIVATE_PREFIX) {
            return Err(Errno::PERM.into());
        }
        self.locked(|st| {
            if value.is_none() {
                // Removing what is not there changes nothing (and copies nothing up).
                let has = self.xattr_list(st, ino)?.iter().any(|(k, _)| k == key);
                if !has {
                    return Err(Errno::NODATA.into());
                }
            }
            self.copy_up_meta(st, ino)?;
            let (dir, name) = self.upper_entry(st, ino)?;
            let path = upper::xattr_path(dir.as_fd(), &name);
            let key = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(key);
            match value {
                Some((v, flags)) => {
                    rustix::fs::lsetxattr(&path, key, v, rustix::fs::XattrFlags::from_bits_truncate(flags as u32))?
                }
                None => rustix::fs::lremovexattr(&path, key)?,
            }
            Ok(())
        })
    }

    fn xattr_list(&self, st: &State, ino: u64) -> Result<upper::Xattrs> {
        let n = self.node(st, ino)?;
        if n.upper {
            let (dir, name) = self.upper_entry(st, ino)?;
            return Ok(upper::xattrs(&upper::xattr_path(dir.as_fd(), &name))?);
        }
        Ok(self.lower.xattrs(n.lower.ok_or(OvlError::Errno(Errno::NOENT))?)?)
    }

    /// `getxattr`
    pub fn op_getxattr(&self, ino: u64, key: &[u8]) -> Result<Vec<u8>> {
        self.locked(|st| {
            if key.starts_with(upper::PRIVATE_PREFIX) {
                return Err(Errno::NODATA.into());
            }
            // An open upper file answers from its descriptor: the kernel asks for
            // security.capability before every write, and a path walk each time costs.
            if let Some(fd) = self.node(st, ino)?.fd.clone() {
                let key = std::str::from_utf8(key).map_err(|_| OvlError::Errno(Errno::NODATA))?;
                return upper::get_xattr_fd(fd.as_fd(), key)?.ok_or(OvlError::Errno(Errno::NODATA));
            }
            self.xattr_list(st, ino)?
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .ok_or(OvlError::Errno(Errno::NODATA))
        })
    }

    /// `listxattr`
    pub fn op_listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        self.locked(|st| {
            let mut out = Vec::new();
            for (k, _) in self.xattr_list(st, ino)? {
                out.extend_from_slice(&k);
                out.push(0);
            }
            Ok(out)
        })
    }

    /// `opendir`: the listing is made once per open directory, so offsets stay valid.
    pub fn op_opendir(&self, ino: u64) -> Result<u64> {
        self.locked(|st| {
            let n = self.node(st, ino)?;
            if n.kind != EntryKind::Directory {
                return Err(Errno::NOTDIR.into());
            }
            let parent = n.first_name().map_or(ROOT_INO, |(p, _)| *p);
            let mut entries = vec![
                (b".".to_vec(), ino, FileType::Directory),
                (b"..".to_vec(), parent, FileType::Directory),
            ];
            entries.extend(self.listing(st, ino)?);
            let fh = st.handles.new_fh();
            st.handles.listings.insert(fh, (ino, entries));
            Ok(fh)
        })
    }

    /// Run `f` on the listing of open directory `fh`.
    pub fn with_listing(&self, ino: u64, fh: u64, f: impl FnOnce(&[(Vec<u8>, u64, FileType)])) -> Result<()> {
        let st = self.state.lock();
        match st.handles.listings.get(&fh) {
            Some((i, entries)) if *i == ino => {
                f(entries);
                Ok(())
            }
            _ => Err(Errno::BADF.into()),
        }
    }

    /// `fsyncdir`
    pub fn op_fsyncdir(&self, ino: u64) -> Result<()> {
        self.locked(|st| {
            if self.node(st, ino)?.upper {
                let d = self.upper_dir(st, ino)?;
                rustix::fs::fsync(&d)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fsxattr_of;

    #[test]
    fn inode_flags_map_to_their_fsxattr_twins() {
        // (FS_*_FL bits, FS_XFLAG_* bits)
        let cases = [
            (0, 0),
            (0x10, 0x08),            // immutable
            (0x20, 0x10),            // append-only
            (0x10 | 0x20, 0x18),     // both
            (0x8_0000, 0),           // extents: no twin
            (0x80 | 0x8_0000, 0x40), // noatime, extents dropped
        ];
        for (flags, xflags) in cases {
            let out = fsxattr_of(flags);
            assert_eq!(
                u32::from_ne_bytes([out[0], out[1], out[2], out[3]]),
                xflags,
                "{flags:#x}"
            );
            assert!(out[4..].iter().all(|b| *b == 0));
        }
    }
}
