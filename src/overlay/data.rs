//! The writable mount's file data: open handles (with FUSE passthrough for upper files), read,
//! write, fsync, fallocate. Copy-up is in [`super::copyup`].
//!
//! The kernel wants all open handles of an inode in one I/O mode: either every one
//! passthrough to the same backing file, or every one through the page cache (it fails an
//! open that breaks this with EIO). Lower files are read through the page cache; an upper
//! file is opened with passthrough unless it is open through the page cache already (a
//! reader that had it open before the copy-up), and then through the daemon until closed.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use fuser::{BackingId, FileType, FopenFlags, INodeNo};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::{OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;

const O_ACCMODE: i32 = 0o3;
const O_RDONLY: i32 = 0;
pub(super) const O_TRUNC: i32 = 0o1000;
const O_APPEND: i32 = 0o2000;

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

/// The descriptor an upper file's handles share: read-write; for an append-only file (which
/// the kernel opens for writing only with `O_APPEND`) appending; for an immutable one read-only.
fn open_shared(dir: &OwnedFd, name: &[u8]) -> Result<OwnedFd> {
    let base = OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut last = Errno::PERM;
    for access in [OFlags::RDWR, OFlags::RDWR | OFlags::APPEND, OFlags::RDONLY] {
        match rustix::fs::openat(dir, name, base | access, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::PERM) => last = Errno::PERM,
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.into())
}

/// EPERM for an open for writing (`flags`; 0 for a truncate) that the upper file's immutable
/// or append-only flag forbids, as the VFS refuses it on kernel overlayfs (whose inode
/// carries the flags).
pub(super) fn check_write_open(fd: &OwnedFd, flags: i32) -> Result<()> {
    use rustix::fs::IFlags;
    // A file system without these flags has none set.
    let Ok(f) = rustix::fs::ioctl_getflags(fd) else {
        return Ok(());
    };
    let append_only = f.contains(IFlags::APPEND) && (flags & O_APPEND == 0 || flags & O_TRUNC != 0);
    if f.contains(IFlags::IMMUTABLE) || append_only {
        return Err(Errno::PERM.into());
    }
    Ok(())
}

pub(super) fn pwrite_all(fd: &OwnedFd, mut data: &[u8], mut offset: u64) -> Result<()> {
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
        Ok(Arc::new(open_shared(&dir, &name)?))
    }

    /// `fd`, the shared descriptor of upper file `ino`, if it can write anywhere; else (it was
    /// opened while the file was immutable or append-only, and no longer is) a fresh one that
    /// the file's handles share from now on (a passthrough handle keeps its backing file).
    fn writable_shared_fd(&self, st: &mut State, ino: u64, fd: Arc<OwnedFd>) -> Result<Arc<OwnedFd>> {
        let how = rustix::fs::fcntl_getfl(&*fd)?;
        if how.contains(OFlags::RDWR) && !how.contains(OFlags::APPEND) {
            return Ok(fd);
        }
        let (dir, name) = self.upper_entry(st, ino)?;
        let fresh = Arc::new(open_shared(&dir, &name)?);
        if let Some(n) = st.nodes.get_mut(ino).filter(|n| n.fd.is_some()) {
            n.fd = Some(fresh.clone());
        }
        Ok(fresh)
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
        let mut backing = Some(backing);
        self.locked(|st| {
            let kind = self.node(st, ino)?.kind;
            if kind == EntryKind::Directory {
                return Err(Errno::ISDIR.into());
            }
            if write || trunc {
                self.copy_up(st, ino, !trunc)?;
            }
            let n = self.node(st, ino)?;
            if n.upper && !n.metacopy && kind == EntryKind::Regular {
                let mut fd = self.file_fd(st, ino)?;
                if write || trunc {
                    check_write_open(&fd, flags)?;
                    fd = self.writable_shared_fd(st, ino, fd)?;
                }
                if trunc {
                    rustix::fs::ftruncate(&*fd, 0)?;
                }
                // Nothing after this point asks to run again.
                let backing = backing.take().ok_or(OvlError::Errno(Errno::IO))?;
                return self.upper_handle(st, ino, fd, backing);
            }
            let fh = st.handles.new_fh();
            st.handles.files.insert(fh, (ino, false));
            *st.handles.cached.entry(ino).or_default() += 1;
            Ok((fh, FopenFlags::FOPEN_KEEP_CACHE, None))
        })
    }

    /// The handle of a file `create` just made (open read-write as `fd`).
    pub fn op_open_created(
        &self,
        ino: u64,
        fd: OwnedFd,
        backing: impl FnOnce(&OwnedFd) -> std::io::Result<BackingId>,
    ) -> Result<(u64, FopenFlags, Option<Arc<BackingId>>)> {
        let mut st = self.state.lock();
        let r = self.upper_handle(&mut st, ino, Arc::new(fd), backing);
        self.sweep(&mut st);
        r
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
            st.nodes.check(ino);
            self.sweep(&mut st);
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
        let fd = self.locked(|st| {
            self.copy_up(st, ino, true)?;
            self.file_fd(st, ino)
        })?;
        rustix::fs::fallocate(
            &*fd,
            rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
            offset,
            length,
        )?;
        Ok(())
    }
}
