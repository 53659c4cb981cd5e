//! The writable mount's file data: copy-up, open handles (with FUSE passthrough for upper
//! files), read, write, fsync, fallocate.
//!
//! The kernel wants all open handles of an inode in one I/O mode: either every one
//! passthrough to the same backing file, or every one through the page cache (it fails an
//! open that breaks this with EIO). Lower files are read through the page cache; an upper
//! file is opened with passthrough unless it is open through the page cache already (a
//! reader that had it open before the copy-up), and then through the daemon until closed.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};

use fuser::{BackingId, FileType, FopenFlags, INodeNo};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timestamps};
use rustix::io::Errno;

use super::{OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;
use crate::union::ROOT_INO;
use crate::upper;

/// Bytes copied per lower read during copy-up.
const COPY_PIECE: u64 = 1 << 20;

const O_ACCMODE: i32 = 0o3;
const O_RDONLY: i32 = 0;
const O_TRUNC: i32 = 0o1000;

/// Which bytes a copy-up gives the upper file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bytes {
    /// The lower file's.
    All,
    /// None (it is about to be truncated to nothing).
    None,
    /// The size only, marked metacopy: the bytes stay below until the first write.
    Later,
}

/// A directory listing: name, inode, type.
pub type Listing = Vec<(Vec<u8>, u64, FileType)>;

/// Open files and directories.
#[derive(Default)]
pub struct Handles {
    /// Open directories: inode and the listing made at open.
    pub listings: HashMap<u64, (u64, Listing)>,
    /// Open files: handle → (inode, counted in the node's `opens`).
    files: HashMap<u64, (u64, bool)>,
    /// Passthrough handles and the backing file each holds.
    passthrough: HashMap<u64, Arc<BackingId>>,
    /// The backing file of an inode while any passthrough handle of it is open.
    backing: HashMap<u64, Weak<BackingId>>,
    /// Handles through the page cache, per inode.
    cached: HashMap<u64, usize>,
    next: u64,
}

impl Handles {
    /// A fresh handle number.
    pub fn new_fh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

fn pwrite_all(fd: &OwnedFd, mut data: &[u8], mut offset: u64) -> Result<()> {
    while !data.is_empty() {
        let n = rustix::io::pwrite(fd, data, offset)?;
        if n == 0 {
            return Err(Errno::IO.into());
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

impl OverlayFs {
    /// Copy `ino` (and its parents) into the upper, atomically: made aside with the lower
    /// object's metadata, xattrs and (if `with_data`) bytes, then renamed into place. A lower
    /// hard-link group stays one inode: its other names are linked to the copy.
    pub(super) fn copy_up(&self, st: &mut State, ino: u64, with_data: bool) -> Result<()> {
        self.copy_up_as(st, ino, if with_data { Bytes::All } else { Bytes::None })
    }

    /// [`Self::copy_up`] with the bytes `bytes` says.
    fn copy_up_as(&self, st: &mut State, ino: u64, bytes: Bytes) -> Result<()> {
        let n = self.node(st, ino)?;
        if n.upper {
            if n.metacopy && bytes != Bytes::Later {
                self.end_metacopy(st, ino, bytes == Bytes::All)?;
            }
            return Ok(());
        }
        let (parent, name) = n.names.first().cloned().ok_or(OvlError::Errno(Errno::NOENT))?;
        let (kind, l) = (n.kind, n.lower.ok_or(OvlError::Errno(Errno::NOENT))?);
        self.copy_up(st, parent, true)?;
        let pdir = self.upper_dir(st, parent)?;
        let a = self.lower.getattr(l)?;
        let (scratch, sname) = self.upper.scratch();
        let sname = sname.as_str();
        let made = self.make_copy(scratch, sname, kind, l, &a, bytes).and_then(|()| {
            rustix::fs::renameat_with(scratch, sname, &pdir, name.as_slice(), RenameFlags::NOREPLACE)?;
            Ok(())
        });
        if let Err(e) = made {
            let flag = if kind == EntryKind::Directory {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let _ = rustix::fs::unlinkat(scratch, sname, flag);
            tracing::warn!(ino, error = ?e, "copy-up failed");
            return Err(e);
        }
        let s = rustix::fs::statat(&pdir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        st.nodes.set_upper(ino, s.st_ino);
        if let Some(n) = st.nodes.get_mut(ino) {
            n.metacopy = bytes == Bytes::Later && kind == EntryKind::Regular;
        }
        if kind != EntryKind::Directory && a.nlink > 1 {
            self.link_group(st, ino, l, (&pdir, &name))?;
        }
        Ok(())
    }

    /// Copy `ino` up for a change of metadata only (chmod, chown, utimens, xattrs): with
    /// metacopy chosen for the upper, a regular file of one name gets an upper file of the
    /// same size with no data and the metacopy marker, as overlayfs' metacopy=on makes it; its
    /// bytes are copied when first written. Anything else is copied up whole.
    pub(super) fn copy_up_meta(&self, st: &mut State, ino: u64) -> Result<()> {
        let n = self.node(st, ino)?;
        if n.upper {
            return Ok(()); // metadata changes need nothing more of a metacopy file either
        }
        if n.kind != EntryKind::Regular {
            return self.copy_up(st, ino, true);
        }
        let l = n.lower.ok_or(OvlError::Errno(Errno::NOENT))?;
        let a = self.lower.getattr(l)?;
        if a.nlink > 1 || a.size == 0 || !self.upper.metacopy() {
            return self.copy_up(st, ino, true);
        }
        self.copy_up_as(st, ino, Bytes::Later)
    }

    /// Give metacopy file `ino` its bytes (from the lower file, in place, when `with_data`),
    /// then drop the marker. Until the marker goes the lower bytes are the file's, so a crash
    /// half way loses nothing; hard links to the upper file stay linked.
    fn end_metacopy(&self, st: &mut State, ino: u64, with_data: bool) -> Result<()> {
        let l = self.node(st, ino)?.lower.ok_or(OvlError::Errno(Errno::IO))?;
        let (dir, name) = self.upper_entry(st, ino)?;
        let fd = self.file_fd(st, ino)?;
        let keep = rustix::fs::fstat(&*fd)?;
        if with_data {
            let size = self.lower.getattr(l)?.size.min(keep.st_size as u64);
            self.copy_lower_bytes(l, &fd, size)?;
            rustix::fs::fsync(&*fd)?;
            let times = Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: keep.st_atime,
                    tv_nsec: keep.st_atime_nsec as _,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: keep.st_mtime,
                    tv_nsec: keep.st_mtime_nsec as _,
                },
            };
            rustix::fs::futimens(&*fd, &times)?;
        }
        match rustix::fs::lremovexattr(upper::xattr_path(dir.as_fd(), &name), upper::METACOPY) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(n) = st.nodes.get_mut(ino) {
            n.metacopy = false;
        }
        Ok(())
    }

    /// The first `size` bytes of lower file `l` (fetched through the chunk cache) into `fd`.
    fn copy_lower_bytes(&self, l: u64, fd: &OwnedFd, size: u64) -> Result<()> {
        let mut off = 0;
        while off < size {
            let len = COPY_PIECE.min(size - off);
            let data = self.lower.read(INodeNo(l), off, len as u32)?;
            if data.len() as u64 != len {
                return Err(Errno::IO.into());
            }
            pwrite_all(fd, &data, off)?;
            off += len;
        }
        Ok(())
    }

    /// Make the copy of union node `l` at `sname` in the scratch directory.
    fn make_copy(
        &self,
        scratch: std::os::fd::BorrowedFd<'_>,
        sname: &str,
        kind: EntryKind,
        l: u64,
        a: &fuser::FileAttr,
        bytes: Bytes,
    ) -> Result<()> {
        let perm = Mode::from_raw_mode(a.perm as u32 & 0o7777);
        match kind {
            EntryKind::Directory => rustix::fs::mkdirat(scratch, sname, perm)?,
            EntryKind::Regular | EntryKind::HardLink => {
                let fd = rustix::fs::openat(
                    scratch,
                    sname,
                    OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                match bytes {
                    Bytes::All => self.copy_lower_bytes(l, &fd, a.size)?,
                    // The size without the bytes: no data blocks.
                    Bytes::Later => rustix::fs::ftruncate(&fd, a.size)?,
                    Bytes::None => {}
                }
            }
            EntryKind::Symlink => {
                let target = self.lower.link(l)?;
                rustix::fs::symlinkat(target.as_slice(), scratch, sname)?
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let ft = match kind {
                    EntryKind::CharDevice => rustix::fs::FileType::CharacterDevice,
                    EntryKind::BlockDevice => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                rustix::fs::mknodat(scratch, sname, ft, perm, a.rdev as u64)?
            }
        }
        rustix::fs::chownat(
            scratch,
            sname,
            Some(rustix::fs::Uid::from_raw(a.uid)),
            Some(rustix::fs::Gid::from_raw(a.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if kind != EntryKind::Symlink {
            rustix::fs::chmodat(scratch, sname, perm, AtFlags::empty())?;
        }
        let path = upper::xattr_path(scratch, sname.as_bytes());
        for (k, v) in self.lower.xattrs(l)? {
            let key = std::ffi::OsStr::new(std::str::from_utf8(&k).map_err(|_| OvlError::Errno(Errno::INVAL))?);
            rustix::fs::lsetxattr(&path, key, &v, rustix::fs::XattrFlags::empty())?;
        }
        if bytes == Bytes::Later && kind == EntryKind::Regular {
            // Marked before it is renamed into place: never an upper file without its bytes
            // that claims to have them.
            upper::set_marker(scratch, sname.as_bytes(), upper::METACOPY, b"")?;
        }
        let t = a
            .mtime
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            })
            .unwrap_or(rustix::fs::Timespec { tv_sec: 0, tv_nsec: 0 });
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(scratch, sname, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Link the other names of lower hard-link group `l` (still showing it) to `ino`'s copy.
    fn link_group(&self, st: &mut State, ino: u64, l: u64, copy: (&OwnedFd, &[u8])) -> Result<()> {
        for (lp, lname) in self.lower.names(l)? {
            // The name's directory must still show in the merged view (perhaps moved).
            if self.merged_dir_of_lower(st, lp)? != Some(lp) || self.resolve(st, lp, &lname)? != Some(ino) {
                continue;
            }
            self.copy_up(st, lp, true)?;
            let dir = self.upper_dir(st, lp)?;
            if upper::stat_at(dir.as_fd(), &lname)?.is_none() {
                rustix::fs::linkat(copy.0, copy.1, &dir, lname.as_slice(), AtFlags::empty())?;
            }
        }
        Ok(())
    }

    /// Whether lower directory `lp` shows in the merged view, where it or one of its
    /// directories may have been moved: Some(lp) when it does (a directory from the image
    /// keeps its union inode number, moved or not).
    fn merged_dir_of_lower(&self, st: &mut State, lp: u64) -> Result<Option<u64>> {
        let Some(path) = self.lower.path(lp) else {
            return Ok(None);
        };
        // The lower directories from the root down to lp.
        let mut chain = vec![ROOT_INO];
        for c in &path {
            let parent = *chain.last().expect("not empty");
            match self.lower.child(parent, c)? {
                Some(next) => chain.push(next),
                None => return Ok(None),
            }
        }
        // From the deepest of them the merged view has a node for (a moved one has one: it
        // was looked up to be moved), down by name, each step the same lower directory.
        for i in (0..chain.len()).rev() {
            let a = chain[i];
            let known = st
                .nodes
                .get(a)
                .is_some_and(|n| n.lower == Some(a) && n.kind == EntryKind::Directory)
                && st.nodes.path(a).is_some();
            if !known {
                continue;
            }
            let mut cur = a;
            for (j, c) in path[i..].iter().enumerate() {
                match self.resolve(st, cur, c)? {
                    Some(next) if next == chain[i + j + 1] => cur = next,
                    _ => return Ok(None),
                }
            }
            return Ok(Some(cur));
        }
        Ok(None)
    }

    /// The upper file of `ino`: the one its handles share, or a fresh descriptor.
    pub(super) fn file_fd(&self, st: &mut State, ino: u64) -> Result<Arc<OwnedFd>> {
        let n = self.node(st, ino)?;
        if let Some(fd) = &n.fd {
            return Ok(fd.clone());
        }
        if !n.upper || n.kind != EntryKind::Regular {
            return Err(Errno::INVAL.into());
        }
        let (dir, name) = self.upper_entry(st, ino)?;
        let fd = rustix::fs::openat(
            &dir,
            name.as_slice(),
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Arc::new(fd))
    }

    /// A handle for upper file `ino` with descriptor `fd`: passthrough when the kernel allows.
    fn upper_handle(
        &self,
        st: &mut State,
        ino: u64,
        fd: Arc<OwnedFd>,
        backing: impl FnOnce(&OwnedFd) -> std::io::Result<BackingId>,
    ) -> Result<(u64, FopenFlags, Option<Arc<BackingId>>)> {
        let n = st.nodes.get_mut(ino).ok_or(OvlError::Errno(Errno::NOENT))?;
        n.opens += 1;
        if n.fd.is_none() {
            n.fd = Some(fd.clone());
        }
        let fh = st.handles.new_fh();
        st.handles.files.insert(fh, (ino, true));
        if self.passthrough && st.handles.cached.get(&ino).copied().unwrap_or(0) == 0 {
            let id = match st.handles.backing.get(&ino).and_then(Weak::upgrade) {
                Some(id) => Some(id),
                None => match backing(&fd) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        st.handles.backing.insert(ino, Arc::downgrade(&id));
                        Some(id)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "passthrough refused; serving reads and writes");
                        None
                    }
                },
            };
            if let Some(id) = id {
                st.handles.passthrough.insert(fh, id.clone());
                return Ok((fh, FopenFlags::empty(), Some(id)));
            }
        }
        *st.handles.cached.entry(ino).or_default() += 1;
        Ok((fh, FopenFlags::empty(), None))
    }

    /// `open`: copy-up first when opened for writing or truncation.
    pub fn op_open(
        &self,
        ino: u64,
        flags: i32,
        backing: impl FnOnce(&OwnedFd) -> std::io::Result<BackingId>,
    ) -> Result<(u64, FopenFlags, Option<Arc<BackingId>>)> {
        let write = flags & O_ACCMODE != O_RDONLY;
        let trunc = flags & O_TRUNC != 0;
        let mut st = self.state.lock();
        let kind = self.node(&st, ino)?.kind;
        if kind == EntryKind::Directory {
            return Err(Errno::ISDIR.into());
        }
        if write || trunc {
            self.copy_up(&mut st, ino, !trunc)?;
        }
        let n = self.node(&st, ino)?;
        if n.upper && !n.metacopy && kind == EntryKind::Regular {
            let fd = self.file_fd(&mut st, ino)?;
            if trunc {
                rustix::fs::ftruncate(&*fd, 0)?;
            }
            return self.upper_handle(&mut st, ino, fd, backing);
        }
        let fh = st.handles.new_fh();
        st.handles.files.insert(fh, (ino, false));
        *st.handles.cached.entry(ino).or_default() += 1;
        Ok((fh, FopenFlags::FOPEN_KEEP_CACHE, None))
    }

    /// The handle of a file `create` just made (open read-write as `fd`).
    pub fn op_open_created(
        &self,
        ino: u64,
        fd: OwnedFd,
        backing: impl FnOnce(&OwnedFd) -> std::io::Result<BackingId>,
    ) -> Result<(u64, FopenFlags, Option<Arc<BackingId>>)> {
        let mut st = self.state.lock();
        self.upper_handle(&mut st, ino, Arc::new(fd), backing)
    }

    /// `release`
    pub fn op_release(&self, ino: u64, fh: u64) {
        let mut st = self.state.lock();
        let Some((_, counted)) = st.handles.files.remove(&fh) else {
            return;
        };
        if st.handles.passthrough.remove(&fh).is_none() {
            if let Some(c) = st.handles.cached.get_mut(&ino) {
                *c -= 1;
                if *c == 0 {
                    st.handles.cached.remove(&ino);
                }
            }
        }
        st.handles.backing.retain(|_, w| w.strong_count() > 0);
        if counted {
            if let Some(n) = st.nodes.get_mut(ino) {
                n.opens = n.opens.saturating_sub(1);
                if n.opens == 0 {
                    n.fd = None;
                }
            }
        }
    }

    /// `read`: from the upper file, or from the image.
    pub fn op_read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let source = {
            let mut st = self.state.lock();
            let n = self.node(&st, ino)?;
            if n.upper && !n.metacopy {
                Ok(self.file_fd(&mut st, ino)?)
            } else {
                Err(n.lower.ok_or(OvlError::Errno(Errno::NOENT))?)
            }
        };
        match source {
            Ok(fd) => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    let n = rustix::io::pread(&*fd, &mut buf[got..], offset + got as u64)?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                buf.truncate(got);
                Ok(buf)
            }
            Err(l) => Ok(self.lower.read(INodeNo(l), offset, size)?),
        }
    }

    /// `write` (the file was copied up when opened for writing).
    pub fn op_write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let fd = {
            let mut st = self.state.lock();
            self.file_fd(&mut st, ino)?
        };
        pwrite_all(&fd, data, offset)?;
        Ok(data.len())
    }

    /// `fsync` / `fdatasync`, and the directory holding the file, so its name is durable too.
    pub fn op_fsync(&self, ino: u64, datasync: bool) -> Result<()> {
        let (fd, dir) = {
            let mut st = self.state.lock();
            if !self.node(&st, ino)?.upper {
                return Ok(());
            }
            let fd = self.file_fd(&mut st, ino).ok();
            (fd, self.upper_entry(&st, ino).ok().map(|(d, _)| d))
        };
        if let Some(fd) = fd {
            if datasync {
                rustix::fs::fdatasync(&*fd)?;
            } else {
                rustix::fs::fsync(&*fd)?;
            }
        }
        if let Some(d) = dir {
            rustix::fs::fsync(&d)?;
        }
        Ok(())
    }

    /// `fallocate`
    pub fn op_fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let fd = {
            let mut st = self.state.lock();
            self.copy_up(&mut st, ino, true)?;
            self.file_fd(&mut st, ino)?
        };
        rustix::fs::fallocate(
            &*fd,
            rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
            offset,
            length,
        )?;
        Ok(())
    }
}
