//! The writable mount's namespace operations: lookup and attributes, create, remove, rename,
//! link, attribute and xattr changes, listings. Each takes the lock, works on the upper
//! directory through [`crate::upper`] and returns a `Result`.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};

use fuser::{FileAttr, FileType, INodeNo, Request, TimeOrNow};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timestamps};
use rustix::io::Errno;

use super::nodes::ONode;
use super::{attr_of, OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;
use crate::union::ROOT_INO;
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

fn kind_of_stat(st: &rustix::fs::Stat) -> EntryKind {
    kind_of_mode(st.st_mode)
}

/// Names a user may give: one component, at most 255 bytes, not an OCI whiteout name
/// (it could not be committed).
fn check_new_name(name: &[u8]) -> Result<()> {
    upper::check_name(name)?;
    if name.len() > 255 {
        return Err(Errno::NAMETOOLONG.into());
    }
    if name.starts_with(b".wh.") {
        return Err(Errno::INVAL.into());
    }
    Ok(())
}

fn time_arg(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
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

/// Upper directory descriptors kept open (well under the default limit of 1024 files).
const MAX_CACHED_DIRS: usize = 256;

impl OverlayFs {
    // ---- shared helpers (lock held) ----

    pub(super) fn node<'a>(&self, st: &'a State, ino: u64) -> Result<&'a ONode> {
        st.nodes.get(ino).ok_or(Errno::NOENT.into())
    }

    /// The upper directory of directory node `ino` (which must be in the upper).
    pub(super) fn upper_dir(&self, st: &State, ino: u64) -> Result<OwnedFd> {
        let path = st.nodes.path(ino).ok_or(OvlError::Errno(Errno::NOENT))?;
        let want = st.nodes.get(ino).filter(|n| n.upper).and_then(|n| n.upper_ino);
        if let Some(want) = want {
            let mut dirs = self.dirs.lock();
            if let Some(fd) = dirs.get(&ino) {
                // The same directory, still linked: it has moved with the node if renamed.
                match rustix::fs::fstat(fd) {
                    Ok(s) if s.st_ino == want && s.st_nlink > 0 => {
                        return Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?);
                    }
                    _ => {
                        dirs.remove(&ino);
                    }
                }
            }
        }
        let fd = self.upper.dir_at(&path)?;
        if let Some(want) = want {
            if rustix::fs::fstat(&fd).is_ok_and(|s| s.st_ino == want) {
                let mut dirs = self.dirs.lock();
                if dirs.len() >= MAX_CACHED_DIRS {
                    dirs.clear();
                }
                dirs.insert(ino, rustix::io::fcntl_dupfd_cloexec(&fd, 0)?);
            }
        }
        Ok(fd)
    }

    /// The upper directory holding `ino`'s first name, and that name (for the root: the root
    /// and an empty name).
    pub(super) fn upper_entry(&self, st: &State, ino: u64) -> Result<(OwnedFd, Vec<u8>)> {
        if ino == ROOT_INO {
            return Ok((self.upper.dir_at(&[])?, Vec::new()));
        }
        let (parent, name) = self
            .node(st, ino)?
            .names
            .first()
            .cloned()
            .ok_or(OvlError::Errno(Errno::NOENT))?;
        Ok((self.upper_dir(st, parent)?, name))
    }

    /// Stat of an upper object.
    pub(super) fn upper_stat(&self, st: &State, ino: u64) -> Result<rustix::fs::Stat> {
        let n = self.node(st, ino)?;
        if let Some(fd) = &n.fd {
            return Ok(rustix::fs::fstat(fd)?);
        }
        let (dir, name) = self.upper_entry(st, ino)?;
        if name.is_empty() {
            return Ok(rustix::fs::fstat(&dir)?);
        }
        Ok(rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Whether directory `parent`'s lower side has `name` (so removing it needs a whiteout).
    pub(super) fn lower_has(&self, st: &State, parent: u64, name: &[u8]) -> Result<bool> {
        match self.node(st, parent)?.lower {
            Some(l) => Ok(self.lower.child(l, name)?.is_some()),
            None => Ok(false),
        }
    }

    /// The object at `name` in directory `parent`, if any (registering it).
    pub(super) fn resolve(&self, st: &mut State, parent: u64, name: &[u8]) -> Result<Option<u64>> {
        let p = self.node(st, parent)?;
        if p.kind != EntryKind::Directory {
            return Err(Errno::NOTDIR.into());
        }
        let (p_upper, p_lower) = (p.upper, p.lower);
        if p_upper {
            let dir = self.upper_dir(st, parent)?;
            if let Some(s) = stat_at(dir.as_fd(), name)? {
                if is_whiteout(&s) {
                    return Ok(None);
                }
                let kind = kind_of_stat(&s);
                let ino = if kind == EntryKind::Directory {
                    let fd = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    let lower = if upper::is_opaque(fd.as_fd()) {
                        None
                    } else if let Some(path) = upper::redirect_of(fd.as_fd()) {
                        self.lower_at(&path)?
                    } else {
                        match p_lower {
                            Some(l) => self.lower.child(l, name)?,
                            None => None,
                        }
                    };
                    let lower = match lower {
                        Some(l) if self.lower.kind(l)? == EntryKind::Directory => Some(l),
                        _ => None,
                    };
                    match lower {
                        Some(l) => l,
                        None => self.upper_object(st, s.st_ino, kind),
                    }
                } else {
                    self.upper_object(st, s.st_ino, kind)
                };
                // A metacopy file's bytes are the lower file's of the same name (lamina copies
                // the data up before renaming one, so there is no redirect to follow).
                let data_from = if kind == EntryKind::Regular
                    && upper::get_xattr(&upper::xattr_path(dir.as_fd(), name), upper::METACOPY)?.is_some()
                {
                    let l = match p_lower {
                        Some(pl) => self.lower.child(pl, name)?,
                        None => None,
                    };
                    match l {
                        Some(l) if self.lower.kind(l)? == EntryKind::Regular => Some(l),
                        // Its data is gone from below: reads fail rather than show zeros.
                        _ => return Err(Errno::IO.into()),
                    }
                } else {
                    None
                };
                match st.nodes.get_mut(ino) {
                    Some(n) => {
                        n.add_name(parent, name);
                        n.upper = true;
                    }
                    None => {
                        let lower = (kind == EntryKind::Directory && ino < super::nodes::UPPER_BASE).then_some(ino);
                        let mut n = ONode::new(kind, parent, name, lower.or(data_from), true);
                        n.metacopy = data_from.is_some();
                        st.nodes.insert(ino, n);
                    }
                }
                st.nodes.set_upper(ino, s.st_ino);
                return Ok(Some(ino));
            }
        }
        let Some(pl) = p_lower else { return Ok(None) };
        let Some(l) = self.lower.child(pl, name)? else {
            return Ok(None);
        };
        match st.nodes.get_mut(l) {
            Some(n) => n.add_name(parent, name),
            None => {
                let kind = self.lower.kind(l)?;
                st.nodes.insert(l, ONode::new(kind, parent, name, Some(l), false));
            }
        }
        Ok(Some(l))
    }

    /// The node number of the upper object with upper inode `upper_ino`, or a new one.
    fn upper_object(&self, st: &mut State, upper_ino: u64, kind: EntryKind) -> u64 {
        match st.nodes.by_upper(upper_ino) {
            Some(ino) if st.nodes.get(ino).is_some_and(|n| n.kind == kind) => ino,
            _ => st.nodes.allocate(),
        }
    }

    /// The union node at a path (names from the root), if there is one.
    fn lower_at(&self, path: &[Vec<u8>]) -> Result<Option<u64>> {
        let mut ino = ROOT_INO;
        for name in path {
            match self.lower.child(ino, name)? {
                Some(c) => ino = c,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    pub(super) fn attr(&self, st: &State, ino: u64) -> Result<FileAttr> {
        let n = self.node(st, ino)?;
        if n.upper {
            let s = self.upper_stat(st, ino)?;
            return Ok(attr_of(ino, &s));
        }
        let l = n.lower.ok_or(OvlError::Errno(Errno::NOENT))?;
        let mut a = self.lower.getattr(l)?;
        a.ino = INodeNo(ino);
        Ok(a)
    }

    /// The merged children of directory `ino`: name, node, type.
    pub(super) fn listing(&self, st: &mut State, ino: u64) -> Result<super::data::Listing> {
        let n = self.node(st, ino)?;
        if n.kind != EntryKind::Directory {
            return Err(Errno::NOTDIR.into());
        }
        let (is_upper, lower) = (n.upper, n.lower);
        let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        if is_upper {
            let dir = self.upper_dir(st, ino)?;
            let mut d = rustix::fs::Dir::read_from(&dir)?;
            for e in d.by_ref() {
                let e = e?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                seen.insert(name.to_vec());
                if let Some(s) = stat_at(dir.as_fd(), name)? {
                    if !is_whiteout(&s) {
                        names.insert(name.to_vec());
                    }
                }
            }
        }
        if let Some(l) = lower {
            for (name, _) in self.lower.children(l)? {
                if !seen.contains(&name) {
                    names.insert(name);
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(child) = self.resolve(st, ino, &name)? {
                let kind = self.node(st, child)?.kind;
                out.push((name, child, crate::view::file_type(kind)));
            }
        }
        Ok(out)
    }

    // ---- operations ----

    /// `lookup`
    pub fn op_lookup(&self, parent: u64, name: &[u8]) -> Result<FileAttr> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG.into());
        }
        let mut st = self.state.lock();
        let ino = self
            .resolve(&mut st, parent, name)?
            .ok_or(OvlError::Errno(Errno::NOENT))?;
        self.attr(&st, ino)
    }

    /// `getattr`
    pub fn op_getattr(&self, ino: u64) -> Result<FileAttr> {
        let st = self.state.lock();
        self.attr(&st, ino)
    }

    /// `readlink`
    pub fn op_readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let st = self.state.lock();
        let n = self.node(&st, ino)?;
        if n.kind != EntryKind::Symlink {
            return Err(Errno::INVAL.into());
        }
        if n.upper {
            let (dir, name) = self.upper_entry(&st, ino)?;
            return Ok(rustix::fs::readlinkat(&dir, name.as_slice(), Vec::new())?.into_bytes());
        }
        Ok(self.lower.link(n.lower.ok_or(OvlError::Errno(Errno::NOENT))?)?)
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
        let mut st = self.state.lock();
        if self.resolve(&mut st, parent, name)?.is_some() {
            return Err(Errno::EXIST.into());
        }
        self.copy_up(&mut st, parent, true)?;
        let pdir = self.upper_dir(&st, parent)?;
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
        Ok((attr_of(ino, &s), fd))
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
        let mut st = self.state.lock();
        let child = self
            .resolve(&mut st, parent, name)?
            .ok_or(OvlError::Errno(Errno::NOENT))?;
        let kind = self.node(&st, child)?.kind;
        match (dir, kind == EntryKind::Directory) {
            (true, false) => return Err(Errno::NOTDIR.into()),
            (false, true) => return Err(Errno::ISDIR.into()),
            _ => {}
        }
        if dir && !self.listing(&mut st, child)?.is_empty() {
            return Err(Errno::NOTEMPTY.into());
        }
        let lower_here = self.lower_has(&st, parent, name)?;
        self.copy_up(&mut st, parent, true)?;
        self.copy_up_if_linked(&mut st, child)?;
        let pdir = self.upper_dir(&st, parent)?;
        match stat_at(pdir.as_fd(), name)? {
            Some(s) if !is_whiteout(&s) => {
                if dir {
                    let d = self.upper_dir(&st, child)?;
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
        if let Some(n) = st.nodes.get_mut(child) {
            n.remove_name(parent, name);
        }
        Ok(())
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
        let mut st = self.state.lock();
        let src = self
            .resolve(&mut st, parent, name)?
            .ok_or(OvlError::Errno(Errno::NOENT))?;
        let dst = self.resolve(&mut st, newparent, newname)?;
        if exchange && dst.is_none() {
            return Err(Errno::NOENT.into());
        }
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EXIST.into());
        }
        let skind = self.node(&st, src)?.kind;
        if dst == Some(src) {
            return Ok(());
        }
        if skind == EntryKind::Directory && st.nodes.is_within(newparent, src) {
            return Err(Errno::INVAL.into());
        }
        if let Some(d) = dst {
            let dkind = self.node(&st, d)?.kind;
            if exchange {
                if dkind == EntryKind::Directory && st.nodes.is_within(parent, d) {
                    return Err(Errno::INVAL.into());
                }
            } else {
                match (skind == EntryKind::Directory, dkind == EntryKind::Directory) {
                    (true, false) => return Err(Errno::NOTDIR.into()),
                    (false, true) => return Err(Errno::ISDIR.into()),
                    (true, true) if !self.listing(&mut st, d)?.is_empty() => return Err(Errno::NOTEMPTY.into()),
                    _ => {}
                }
            }
        }
        let src_lower_here = self.lower_has(&st, parent, name)?;
        let dst_lower_here = self.lower_has(&st, newparent, newname)?;
        self.copy_up(&mut st, src, true)?;
        if let Some(d) = dst {
            if exchange {
                self.copy_up(&mut st, d, true)?;
            } else {
                self.copy_up_if_linked(&mut st, d)?;
            }
        }
        self.copy_up(&mut st, newparent, true)?;
        let sdir = self.upper_dir(&st, parent)?;
        let ddir = self.upper_dir(&st, newparent)?;
        if skind == EntryKind::Directory {
            self.prepare_moved_dir(&st, src, &sdir, name, dst_lower_here)?;
        }
        if exchange {
            let d = dst.expect("checked");
            if self.node(&st, d)?.kind == EntryKind::Directory {
                self.prepare_moved_dir(&st, d, &ddir, newname, src_lower_here)?;
            }
            rustix::fs::renameat_with(&sdir, name, &ddir, newname, RenameFlags::EXCHANGE)?;
            if let Some(n) = st.nodes.get_mut(d) {
                n.remove_name(newparent, newname);
                n.names.insert(0, (parent, name.to_vec()));
            }
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
                if let Some(n) = st.nodes.get_mut(d) {
                    n.remove_name(newparent, newname);
                }
            }
        }
        if let Some(n) = st.nodes.get_mut(src) {
            n.remove_name(parent, name);
            n.names.insert(0, (newparent, newname.to_vec()));
        }
        Ok(())
    }

    /// `link`
    pub fn op_link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<FileAttr> {
        check_new_name(newname)?;
        let mut st = self.state.lock();
        if self.node(&st, ino)?.kind == EntryKind::Directory {
            return Err(Errno::PERM.into());
        }
        if self.resolve(&mut st, newparent, newname)?.is_some() {
            return Err(Errno::EXIST.into());
        }
        self.copy_up(&mut st, ino, true)?;
        self.copy_up(&mut st, newparent, true)?;
        let (sdir, sname) = self.upper_entry(&st, ino)?;
        let ddir = self.upper_dir(&st, newparent)?;
        match stat_at(ddir.as_fd(), newname)? {
            Some(s) if is_whiteout(&s) => {
                let (scratch, tname) = self.upper.scratch();
                rustix::fs::linkat(&sdir, sname.as_slice(), scratch, tname.as_str(), AtFlags::empty())?;
                rustix::fs::renameat(scratch, tname.as_str(), &ddir, newname)?;
            }
            Some(_) => return Err(Errno::EXIST.into()),
            None => rustix::fs::linkat(&sdir, sname.as_slice(), &ddir, newname, AtFlags::empty())?,
        }
        if let Some(n) = st.nodes.get_mut(ino) {
            n.add_name(newparent, newname);
        }
        self.attr(&st, ino)
    }

    /// `setattr`: chmod, chown, truncate, utimens (after copy-up).
    pub fn op_setattr(&self, ino: u64, c: &AttrChange) -> Result<FileAttr> {
        let mut st = self.state.lock();
        match c.size {
            // Metadata only: the bytes can stay below.
            None => self.copy_up_meta(&mut st, ino)?,
            // Truncating to nothing needs none of the old bytes.
            Some(size) => self.copy_up(&mut st, ino, size != 0)?,
        }
        let (dir, name) = self.upper_entry(&st, ino)?;
        let kind = self.node(&st, ino)?.kind;
        let at = |f: &dyn Fn(std::os::fd::BorrowedFd<'_>, &[u8]) -> rustix::io::Result<()>| -> Result<()> {
            if name.is_empty() {
                // The root: act on the directory itself.
                Ok(f(dir.as_fd(), b".")?)
            } else {
                Ok(f(dir.as_fd(), &name)?)
            }
        };
        if c.uid.is_some() || c.gid.is_some() {
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
            let fd = self.file_fd(&mut st, ino)?;
            rustix::fs::ftruncate(&*fd, size)?;
        }
        if c.atime.is_some() || c.mtime.is_some() {
            let times = Timestamps {
                last_access: time_arg(c.atime),
                last_modification: time_arg(c.mtime),
            };
            at(&|d, n| rustix::fs::utimensat(d, n, &times, AtFlags::SYMLINK_NOFOLLOW))?;
        }
        self.attr(&st, ino)
    }

    /// `setxattr` (`value` Some) and `removexattr` (None).
    pub fn op_setxattr(&self, ino: u64, key: &[u8], value: Option<(&[u8], i32)>) -> Result<()> {
        if key.starts_with(upper::PRIVATE_PREFIX) {
            return Err(Errno::PERM.into());
        }
        let mut st = self.state.lock();
        if value.is_none() {
            // Removing what is not there changes nothing (and copies nothing up).
            let has = self.xattr_list(&st, ino)?.iter().any(|(k, _)| k == key);
            if !has {
                return Err(Errno::NODATA.into());
            }
        }
        self.copy_up_meta(&mut st, ino)?;
        let (dir, name) = self.upper_entry(&st, ino)?;
        let path = upper::xattr_path(dir.as_fd(), &name);
        let key = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(key);
        match value {
            Some((v, flags)) => {
                rustix::fs::lsetxattr(&path, key, v, rustix::fs::XattrFlags::from_bits_truncate(flags as u32))?
            }
            None => rustix::fs::lremovexattr(&path, key)?,
        }
        Ok(())
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
        let st = self.state.lock();
        if key.starts_with(upper::PRIVATE_PREFIX) {
            return Err(Errno::NODATA.into());
        }
        // An open upper file answers from its descriptor: the kernel asks for
        // security.capability before every write, and a path walk each time costs.
        if let Some(fd) = self.node(&st, ino)?.fd.clone() {
            let key = std::str::from_utf8(key).map_err(|_| OvlError::Errno(Errno::NODATA))?;
            return upper::get_xattr_fd(fd.as_fd(), key)?.ok_or(OvlError::Errno(Errno::NODATA));
        }
        self.xattr_list(&st, ino)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or(OvlError::Errno(Errno::NODATA))
    }

    /// `listxattr`
    pub fn op_listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let st = self.state.lock();
        let mut out = Vec::new();
        for (k, _) in self.xattr_list(&st, ino)? {
            out.extend_from_slice(&k);
            out.push(0);
        }
        Ok(out)
    }

    /// `opendir`: the listing is made once per open directory, so offsets stay valid.
    pub fn op_opendir(&self, ino: u64) -> Result<u64> {
        let mut st = self.state.lock();
        let n = self.node(&st, ino)?;
        if n.kind != EntryKind::Directory {
            return Err(Errno::NOTDIR.into());
        }
        let parent = n.names.first().map_or(ROOT_INO, |(p, _)| *p);
        let mut entries = vec![
            (b".".to_vec(), ino, FileType::Directory),
            (b"..".to_vec(), parent, FileType::Directory),
        ];
        entries.extend(self.listing(&mut st, ino)?);
        let fh = st.handles.new_fh();
        st.handles.listings.insert(fh, (ino, entries));
        Ok(fh)
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
        let st = self.state.lock();
        if self.node(&st, ino)?.upper {
            let d = self.upper_dir(&st, ino)?;
            rustix::fs::fsync(&d)?;
        }
        Ok(())
    }
}
