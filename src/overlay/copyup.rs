//! Copy-up: an object of the image made an object of the upper directory, atomically (made
//! in `tmp/` with the lower metadata, xattrs and bytes, renamed into place), parents first. A
//! lower hard-link group stays one inode: its other names are linked to the copy.
//!
//! Objects without bytes to fetch (directories, symlinks, devices, empty files, metacopy
//! files) are copied under the state lock. A regular file's bytes may come from the registry,
//! so that copy runs outside the lock ([`OverlayFs::copy_up_unlocked`], reached through
//! [`Retry::CopyUp`]): the node is marked `copying`, its bytes are copied into a scratch file
//! unlocked, and the lock is taken again to rename the copy to the node's name of that time.
//! See [`super::locking`].

use std::os::fd::{AsFd, OwnedFd};

use fuser::INodeNo;
use parking_lot::MutexGuard;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timestamps};
use rustix::io::Errno;

use super::data::pwrite_all;
use super::locking::Retry;
use super::{OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;
use crate::union::ROOT_INO;
use crate::upper;

/// Bytes copied per lower read during copy-up.
const COPY_PIECE: u64 = 1 << 20;

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

/// Marks node `ino` as being copied up while its bytes are fetched without the lock; should
/// that end by a panic, the mark goes anyway and the waiters wake.
struct CopyingMark<'a> {
    fs: &'a OverlayFs,
    ino: u64,
    armed: bool,
}

impl<'a> CopyingMark<'a> {
    fn set(fs: &'a OverlayFs, st: &mut State, ino: u64) -> CopyingMark<'a> {
        if let Some(n) = st.nodes.get_mut(ino) {
            n.copying = true;
        }
        CopyingMark { fs, ino, armed: true }
    }

    /// Clear the mark (lock held) and wake the operations waiting for it.
    fn clear(mut self, st: &mut State) {
        self.armed = false;
        if let Some(n) = st.nodes.get_mut(self.ino) {
            n.copying = false;
        }
        st.nodes.check(self.ino);
        self.fs.copied.notify_all();
    }
}

impl Drop for CopyingMark<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.fs.state.lock();
            if let Some(n) = st.nodes.get_mut(self.ino) {
                n.copying = false;
            }
            self.fs.copied.notify_all();
        }
    }
}

fn timespec(secs: i64, nanos: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    }
}

impl OverlayFs {
    /// Copy `ino` (and its parents) into the upper with (if `with_data`) its bytes. Under the
    /// lock: a regular file with bytes asks for [`Retry::CopyUp`]; a node being copied up by
    /// another operation asks for [`Retry::Wait`].
    pub(super) fn copy_up(&self, st: &mut State, ino: u64, with_data: bool) -> Result<()> {
        self.copy_up_as(st, ino, if with_data { Bytes::All } else { Bytes::None })
    }

    /// [`Self::copy_up`] with the bytes `bytes` says.
    fn copy_up_as(&self, st: &mut State, ino: u64, bytes: Bytes) -> Result<()> {
        let n = self.node(st, ino)?;
        if n.copying {
            return Err(Retry::Wait(ino).into());
        }
        if n.upper {
            match (n.metacopy, bytes) {
                (true, Bytes::All) => return Err(Retry::CopyUp(ino).into()),
                (true, Bytes::None) => self.drop_metacopy_mark(st, ino)?,
                _ => {}
            }
            return Ok(());
        }
        if n.first_name().is_none() {
            return Err(Errno::NOENT.into());
        }
        let (kind, l) = (n.kind, n.lower.ok_or(OvlError::Errno(Errno::NOENT))?);
        let a = self.lower.getattr(l)?;
        if kind != EntryKind::Directory && a.nlink > 1 && !self.lower.is_complete() {
            // Its other names are found in the whole union, after the copy is in place.
            return Err(Retry::Complete.into());
        }
        let regular = matches!(kind, EntryKind::Regular | EntryKind::HardLink);
        if regular && bytes == Bytes::All {
            return Err(Retry::CopyUp(ino).into());
        }
        let (scratch, sname) = self.upper.scratch();
        let made = self.make_copy(scratch, &sname, kind, l, &a, bytes);
        self.place_copy(st, ino, &sname, &a, made, bytes)
    }

    /// Put the copy of `ino` made at `sname` in the scratch directory (if `made` is Ok) at the
    /// node's first name, with RENAME_NOREPLACE; on any failure the copy is removed.
    fn place_copy(
        &self,
        st: &mut State,
        ino: u64,
        sname: &str,
        a: &fuser::FileAttr,
        made: Result<()>,
        bytes: Bytes,
    ) -> Result<()> {
        let (scratch, _) = self.upper.scratch();
        let kind = self.node(st, ino)?.kind;
        let placed = made.and_then(|()| self.rename_copy(st, ino, sname, bytes));
        if let Err(e) = placed {
            let flag = if kind == EntryKind::Directory {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let _ = rustix::fs::unlinkat(scratch, sname, flag);
            if !matches!(e, OvlError::Retry(_)) {
                tracing::warn!(ino, error = ?e, "copy-up failed");
            }
            return Err(e);
        }
        let n = self.node(st, ino)?;
        if kind != EntryKind::Directory && a.nlink > 1 {
            let l = n.lower.ok_or(OvlError::Errno(Errno::NOENT))?;
            let (pdir, name) = self.upper_entry(st, ino)?;
            self.link_group(st, ino, l, (&pdir, &name))?;
        }
        Ok(())
    }

    /// The rename of [`Self::place_copy`], parents copied up first.
    fn rename_copy(&self, st: &mut State, ino: u64, sname: &str, bytes: Bytes) -> Result<()> {
        let n = self.node(st, ino)?;
        let (parent, name) = n.first_name().cloned().ok_or(OvlError::Errno(Errno::NOENT))?;
        let kind = n.kind;
        self.copy_up(st, parent, true)?;
        let pdir = self.upper_dir(st, parent)?;
        let (scratch, _) = self.upper.scratch();
        rustix::fs::renameat_with(scratch, sname, &pdir, name.as_slice(), RenameFlags::NOREPLACE)?;
        let s = rustix::fs::statat(&pdir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        st.nodes.set_upper(ino, s.st_ino);
        if let Some(n) = st.nodes.get_mut(ino) {
            n.metacopy = bytes == Bytes::Later && kind == EntryKind::Regular;
        }
        Ok(())
    }

    /// The copy-up [`Retry::CopyUp`] asks for, with the lock `st`: a regular file's bytes
    /// are copied with the lock released (the node marked `copying`), then the copy is put
    /// in place under the lock again. A metacopy file gets its bytes in place the same way.
    pub(super) fn copy_up_unlocked(&self, mut st: MutexGuard<'_, State>, ino: u64) -> Result<()> {
        let n = self.node(&st, ino)?;
        if n.copying {
            return Err(Retry::Wait(ino).into());
        }
        if n.upper {
            return match n.metacopy {
                true => self.fill_metacopy(st, ino),
                false => Ok(()),
            };
        }
        let (kind, l) = (n.kind, n.lower.ok_or(OvlError::Errno(Errno::NOENT))?);
        let (parent, _) = n.first_name().cloned().ok_or(OvlError::Errno(Errno::NOENT))?;
        let a = self.lower.getattr(l)?;
        if a.nlink > 1 && !self.lower.is_complete() {
            return Err(Retry::Complete.into());
        }
        // Parents first: a copy-up that cannot land fails before fetching anything.
        self.copy_up(&mut st, parent, true)?;
        let mark = CopyingMark::set(self, &mut st, ino);
        drop(st);
        let (scratch, sname) = self.upper.scratch();
        let made = self.make_copy(scratch, &sname, kind, l, &a, Bytes::All);
        let mut st = self.state.lock();
        mark.clear(&mut st);
        self.place_copy(&mut st, ino, &sname, &a, made, Bytes::All)
    }

    /// Copy metacopy file `ino`'s bytes from the lower file into it, in place and without the
    /// lock, then drop the marker. Until the marker goes the lower bytes are the file's, so a
    /// crash half way loses nothing; hard links to the upper file stay linked.
    fn fill_metacopy(&self, mut st: MutexGuard<'_, State>, ino: u64) -> Result<()> {
        let l = self.node(&st, ino)?.lower.ok_or(OvlError::Errno(Errno::IO))?;
        let fd = self.file_fd(&mut st, ino)?;
        let keep = rustix::fs::fstat(&*fd)?;
        let size = self.lower.getattr(l)?.size.min(keep.st_size as u64);
        let mark = CopyingMark::set(self, &mut st, ino);
        drop(st);
        let filled = self.copy_lower_bytes(l, &fd, size).and_then(|()| {
            rustix::fs::fsync(&*fd)?;
            let times = Timestamps {
                last_access: timespec(keep.st_atime, keep.st_atime_nsec as i64),
                last_modification: timespec(keep.st_mtime, keep.st_mtime_nsec as i64),
            };
            Ok(rustix::fs::futimens(&*fd, &times)?)
        });
        let mut st = self.state.lock();
        mark.clear(&mut st);
        if let Err(e) = filled {
            tracing::warn!(ino, error = ?e, "copy-up of a metacopy file's bytes failed");
            return Err(e);
        }
        self.drop_metacopy_mark(&mut st, ino)
    }

    /// Drop metacopy file `ino`'s marker: its upper bytes are now its bytes.
    fn drop_metacopy_mark(&self, st: &mut State, ino: u64) -> Result<()> {
        let fd = self.file_fd(st, ino)?;
        match rustix::fs::fremovexattr(&*fd, upper::METACOPY) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(n) = st.nodes.get_mut(ino) {
            n.metacopy = false;
        }
        Ok(())
    }

    /// Copy `ino` up for a change of metadata only (chmod, chown, utimens, xattrs): with
    /// metacopy chosen for the upper, a regular file of one name gets an upper file of the
    /// same size with no data and the metacopy marker, as overlayfs' metacopy=on makes it; its
    /// bytes are copied when first written. Anything else is copied up whole.
    pub(super) fn copy_up_meta(&self, st: &mut State, ino: u64) -> Result<()> {
        let n = self.node(st, ino)?;
        if n.copying {
            return Err(Retry::Wait(ino).into());
        }
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
        for (lp, lname) in self.lower_names(l)? {
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
            match self.lower_child(parent, c)? {
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
}
