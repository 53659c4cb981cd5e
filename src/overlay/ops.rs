//! The writable mount's namespace operations: lookup, create, remove, rename. Each takes the
//! lock, resolves names in the merged view ([`super::merged`]), works on the upper directory
//! through [`crate::upper`] and returns a `Result`. Attribute, xattr, link and listing
//! operations are in [`super::attrs`].

use std::os::fd::{AsFd, OwnedFd};

use fuser::{FileAttr, Request, TimeOrNow};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::nodes::ONode;
use super::{attr_of, OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;
use crate::upper::{self, is_whiteout, stat_at};

/// What `create`, `mkdir`, `mknod` and `symlink` make.
pub enum New {
    /// A regular file (left open).
    File {
        /// Mode as asked (umask applied by the kernel).
        mode: u32,
    },
    /// A directory.
    Dir {
        /// Mode.
        mode: u32,
    },
    /// A device, fifo, socket or (from mknod) regular file.
    Node {
        /// Type and mode.
        mode: u32,
        /// Device number.
        rdev: u32,
    },
    /// A symlink.
    Symlink {
        /// Its target.
        target: Vec<u8>,
    },
}

/// The changes of one `setattr`.
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl AttrChange {
    /// Nothing but ctime changes (`chown(f, -1, -1)`).
    pub fn is_empty(&self) -> bool {
        let times = self.atime.is_none() && self.mtime.is_none();
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none() && self.size.is_none() && times
    }
}

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

fn kind_of_mode(mode: u32) -> EntryKind {
    match mode & 0o170000 {
        0o040000 => EntryKind::Directory,
        0o120000 => EntryKind::Symlink,
        0o020000 => EntryKind::CharDevice,
        0o060000 => EntryKind::BlockDevice,
        0o010000 => EntryKind::Fifo,
        _ => EntryKind::Regular,
    }
}

pub(super) fn kind_of_stat(st: &rustix::fs::Stat) -> EntryKind {
    kind_of_mode(st.st_mode)
}

/// Names a user may give: one component, at most 255 bytes, not an OCI whiteout name
/// (it could not be committed).
pub(super) fn check_new_name(name: &[u8]) -> Result<()> {
    upper::check_name(name)?;
    if name.len() > 255 {
        return Err(Errno::NAMETOOLONG.into());
    }
    if name.starts_with(b".wh.") {
        return Err(Errno::INVAL.into());
    }
    Ok(())
}

pub(super) fn time_arg(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    const UTIME_NOW: i64 = (1 << 30) - 1;
    const UTIME_OMIT: i64 = (1 << 30) - 2;
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT as _,
        },
        Some(TimeOrNow::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW as _,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (s, n) = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            rustix::fs::Timespec {
                tv_sec: s,
                tv_nsec: n as _,
            }
        }
    }
}

impl OverlayFs {
    /// `lookup`: the attributes of the object at `name` (None: there is none).
    pub fn op_lookup(&self, parent: u64, name: &[u8]) -> Result<Option<FileAttr>> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG.into());
        }
        self.locked(|st| {
            let Some(ino) = self.resolve(st, parent, name)? else {
                return Ok(None);
            };
            let attr = self.attr(st, ino)?;
            st.nodes.looked_up(ino);
            Ok(Some(attr))
        })
    }

    /// `getattr`
    pub fn op_getattr(&self, ino: u64) -> Result<FileAttr> {
        self.locked(|st| self.attr(st, ino))
    }

    /// `readlink`
    pub fn op_readlink(&self, ino: u64) -> Result<Vec<u8>> {
        self.locked(|st| {
            let n = self.node(st, ino)?;
            if n.kind != EntryKind::Symlink {
                return Err(Errno::INVAL.into());
            }
            if n.upper {
                let (dir, name) = self.upper_entry(st, ino)?;
                return Ok(rustix::fs::readlinkat(&dir, name.as_slice(), Vec::new())?.into_bytes());
            }
            Ok(self.lower.link(n.lower.ok_or(OvlError::Errno(Errno::NOENT))?)?)
        })
    }

    /// `create`, `mkdir`, `mknod`, `symlink`: the new object's attributes (and a regular
    /// file's descriptor, open read-write).
    pub fn op_create(&self, req: &Request, parent: u64, name: &[u8], what: New) -> Result<(FileAttr, Option<OwnedFd>)> {
        check_new_name(name)?;
        if let New::Node { mode, rdev: 0 } = what {
            if mode & 0o170000 == 0o020000 {
                // A 0/0 character device is a whiteout: not something a user can make.
                return Err(Errno::PERM.into());
            }
        }
        self.locked(|st| {
            if self.resolve(st, parent, name)?.is_some() {
                return Err(Errno::EXIST.into());
            }
            self.copy_up(st, parent, true)?;
            let pdir = self.upper_dir(st, parent)?;
            let replacing = match stat_at(pdir.as_fd(), name)? {
                Some(s) if is_whiteout(&s) => true,
                Some(_) => return Err(Errno::EXIST.into()),
                None => false,
            };
            let pst = rustix::fs::fstat(&pdir)?;
            let setgid_dir = pst.st_mode & 0o2000 != 0;
            let uid = req.uid();
            let gid = if setgid_dir { pst.st_gid } else { req.gid() };
            let (scratch, scratch_name) = self.upper.scratch();
            let (tdir, tname): (std::os::fd::BorrowedFd<'_>, &[u8]) = if replacing {
                (scratch, scratch_name.as_bytes())
            } else {
                (pdir.as_fd(), name)
            };
            let mut fd = None;
            let (kind, mode) = match &what {
                New::File { mode } => {
                    fd = Some(rustix::fs::openat(
                        tdir,
                        tname,
                        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(mode & 0o7777),
                    )?);
                    (EntryKind::Regular, mode & 0o7777)
                }
                New::Dir { mode } => {
                    rustix::fs::mkdirat(tdir, tname, Mode::from_raw_mode(mode & 0o7777))?;
                    let sgid = if setgid_dir { 0o2000 } else { 0 };
                    (EntryKind::Directory, (mode & 0o7777) | sgid)
                }
                New::Node { mode, rdev } => {
                    let ft = rustix::fs::FileType::from_raw_mode(*mode);
                    rustix::fs::mknodat(tdir, tname, ft, Mode::from_raw_mode(mode & 0o7777), *rdev as u64)?;
                    (kind_of_mode(*mode), mode & 0o7777)
                }
                New::Symlink { target } => {
                    rustix::fs::symlinkat(target.as_slice(), tdir, tname)?;
                    (EntryKind::Symlink, 0o777)
                }
            };
            let finish = || -> Result<()> {
                rustix::fs::chownat(
                    tdir,
                    tname,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                if kind != EntryKind::Symlink {
                    // After chown, which may clear set-id bits.
                    rustix::fs::chmodat(tdir, tname, Mode::from_raw_mode(mode), AtFlags::empty())?;
                }
                if replacing && kind == EntryKind::Directory {
                    // A directory made where a lower one was deleted must not show its old contents.
                    upper::set_marker(tdir, tname, upper::OPAQUE, b"y")?;
                }
                if replacing {
                    rustix::fs::renameat_with(tdir, tname, &pdir, name, RenameFlags::EXCHANGE)?;
                    rustix::fs::unlinkat(tdir, tname, AtFlags::empty())?;
                }
                Ok(())
            };
            if let Err(e) = finish() {
                let flag = if kind == EntryKind::Directory {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                let _ = rustix::fs::unlinkat(tdir, tname, flag);
                return Err(e);
            }
            let s = rustix::fs::statat(&pdir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            let ino = st.nodes.allocate();
            let mut node = ONode::new(kind, parent, name, None, true);
            node.upper_ino = Some(s.st_ino);
            st.nodes.insert(ino, node);
            st.nodes.looked_up(ino);
            Ok((attr_of(ino, &s), fd))
        })
    }

    /// Before a name of a lower hard-link group goes away: copy the group up (its names
    /// linked in the upper), so the names left count one link less, as overlayfs with
    /// index=on shows them.
    fn copy_up_if_linked(&self, st: &mut State, ino: u64) -> Result<()> {
        let n = self.node(st, ino)?;
        if n.upper || n.kind == EntryKind::Directory {
            return Ok(());
        }
        let Some(l) = n.lower else { return Ok(()) };
        if self.lower.getattr(l)?.nlink > 1 {
            self.copy_up(st, ino, true)?;
        }
        Ok(())
    }

    /// Remove the whiteouts left in an upper directory that is empty in the merged view.
    fn clear_whiteouts(&self, dir: &OwnedFd) -> Result<()> {
        let mut names = Vec::new();
        let mut d = rustix::fs::Dir::read_from(dir)?;
        for e in d.by_ref() {
            let e = e?;
            let name = e.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        for name in names {
            match stat_at(dir.as_fd(), &name)? {
                Some(s) if is_whiteout(&s) => rustix::fs::unlinkat(dir, name.as_slice(), AtFlags::empty())?,
                Some(_) => return Err(Errno::NOTEMPTY.into()),
                None => {}
            }
        }
        Ok(())
    }

    /// `unlink` (`dir` false) and `rmdir` (`dir` true).
    pub fn op_remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        self.locked(|st| {
            let child = self.resolve(st, parent, name)?.ok_or(OvlError::Errno(Errno::NOENT))?;
            let kind = self.node(st, child)?.kind;
            match (dir, kind == EntryKind::Directory) {
                (true, false) => return Err(Errno::NOTDIR.into()),
                (false, true) => return Err(Errno::ISDIR.into()),
                _ => {}
            }
            if dir && !self.listing(st, child)?.is_empty() {
                return Err(Errno::NOTEMPTY.into());
            }
            let lower_here = self.lower_has(st, parent, name)?;
            self.copy_up(st, parent, true)?;
            self.copy_up_if_linked(st, child)?;
            let pdir = self.upper_dir(st, parent)?;
            match stat_at(pdir.as_fd(), name)? {
                Some(s) if !is_whiteout(&s) => {
                    if dir {
                        let d = self.upper_dir(st, child)?;
                        self.clear_whiteouts(&d)?;
                    }
                    let flag = if dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
                    if lower_here {
                        // Atomically: the name is never absent (which would show the lower one).
                        let (scratch, sname) = self.upper.scratch();
                        upper::make_whiteout(scratch, sname.as_bytes())?;
                        if dir {
                            rustix::fs::renameat_with(scratch, sname.as_str(), &pdir, name, RenameFlags::EXCHANGE)?;
                            rustix::fs::unlinkat(scratch, sname.as_str(), flag)?;
                        } else {
                            rustix::fs::renameat(scratch, sname.as_str(), &pdir, name)?;
                        }
                    } else {
                        rustix::fs::unlinkat(&pdir, name, flag)?;
                    }
                    if dir || s.st_nlink <= 1 {
                        st.nodes.drop_upper(s.st_ino);
                    }
                }
                _ => upper::make_whiteout(pdir.as_fd(), name)?,
            }
            st.nodes.remove_name(child, parent, name);
            Ok(())
        })
    }

    /// Before directory `ino` (upper, at `name` in `dir`) moves: a lower directory keeps its
    /// contents through a redirect to where it came from; an upper-only one that lands where
    /// the lower has a name must hide it (opaque).
    fn prepare_moved_dir(&self, st: &State, ino: u64, dir: &OwnedFd, name: &[u8], lower_at_target: bool) -> Result<()> {
        match self.node(st, ino)?.lower {
            Some(l) => {
                let path = self.lower.path(l).ok_or(OvlError::Errno(Errno::NOENT))?;
                let mut value = Vec::new();
                for c in &path {
                    value.push(b'/');
                    value.extend_from_slice(c);
                }
                if value.is_empty() {
                    value.push(b'/');
                }
                upper::set_marker(dir.as_fd(), name, upper::REDIRECT, &value)?;
            }
            None if lower_at_target => upper::set_marker(dir.as_fd(), name, upper::OPAQUE, b"y")?,
            None => {}
        }
        Ok(())
    }

    /// `rename`, with RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn op_rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> Result<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 || flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(Errno::INVAL.into());
        }
        check_new_name(newname)?;
        let exchange = flags & RENAME_EXCHANGE != 0;
        self.locked(|st| {
            let src = self.resolve(st, parent, name)?.ok_or(OvlError::Errno(Errno::NOENT))?;
            let dst = self.resolve(st, newparent, newname)?;
            if exchange && dst.is_none() {
                return Err(Errno::NOENT.into());
            }
            if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
                return Err(Errno::EXIST.into());
            }
            let skind = self.node(st, src)?.kind;
            if dst == Some(src) {
                return Ok(());
            }
            if skind == EntryKind::Directory && st.nodes.is_within(newparent, src) {
                return Err(Errno::INVAL.into());
            }
            if let Some(d) = dst {
                let dkind = self.node(st, d)?.kind;
                if exchange {
                    if dkind == EntryKind::Directory && st.nodes.is_within(parent, d) {
                        return Err(Errno::INVAL.into());
                    }
                } else {
                    match (skind == EntryKind::Directory, dkind == EntryKind::Directory) {
                        (true, false) => return Err(Errno::NOTDIR.into()),
                        (false, true) => return Err(Errno::ISDIR.into()),
                        (true, true) if !self.listing(st, d)?.is_empty() => return Err(Errno::NOTEMPTY.into()),
                        _ => {}
                    }
                }
            }
            let src_lower_here = self.lower_has(st, parent, name)?;
            let dst_lower_here = self.lower_has(st, newparent, newname)?;
            self.copy_up(st, src, true)?;
            if let Some(d) = dst {
                if exchange {
                    self.copy_up(st, d, true)?;
                } else {
                    self.copy_up_if_linked(st, d)?;
                }
            }
            self.copy_up(st, newparent, true)?;
            let sdir = self.upper_dir(st, parent)?;
            let ddir = self.upper_dir(st, newparent)?;
            if skind == EntryKind::Directory {
                self.prepare_moved_dir(st, src, &sdir, name, dst_lower_here)?;
            }
            if exchange {
                let d = dst.expect("checked");
                if self.node(st, d)?.kind == EntryKind::Directory {
                    self.prepare_moved_dir(st, d, &ddir, newname, src_lower_here)?;
                }
                rustix::fs::renameat_with(&sdir, name, &ddir, newname, RenameFlags::EXCHANGE)?;
                st.nodes.remove_name(d, newparent, newname);
                st.nodes.set_first_name(d, parent, name);
            } else {
                let replaced = stat_at(ddir.as_fd(), newname)?;
                if let Some(r) = &replaced {
                    if is_whiteout(r) {
                        // A dir cannot be renamed over a character device; the name is free.
                        rustix::fs::unlinkat(&ddir, newname, AtFlags::empty())?;
                    } else if kind_of_stat(r) == EntryKind::Directory {
                        let d = rustix::fs::openat(
                            &ddir,
                            newname,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        self.clear_whiteouts(&d)?;
                    }
                }
                let rflags = if src_lower_here {
                    RenameFlags::WHITEOUT
                } else {
                    RenameFlags::empty()
                };
                rustix::fs::renameat_with(&sdir, name, &ddir, newname, rflags)?;
                if let Some(r) = replaced.filter(|r| !is_whiteout(r)) {
                    if kind_of_stat(&r) == EntryKind::Directory || r.st_nlink <= 1 {
                        st.nodes.drop_upper(r.st_ino);
                    }
                }
                if let Some(d) = dst {
                    st.nodes.remove_name(d, newparent, newname);
                }
            }
            st.nodes.remove_name(src, parent, name);
            st.nodes.set_first_name(src, newparent, newname);
            Ok(())
        })
    }
}
