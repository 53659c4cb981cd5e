//! The writable mount: the image's union (read through an [`ImageView`]) under an upper directory
//! ([`UpperDir`]), merged as the kernel's overlayfs merges `lowerdir` and `upperdir` with
//! `redirect_dir=on,index=on`: an upper non-directory hides the names below it, directories
//! merge unless opaque, whiteouts delete, renamed directories keep their lower contents
//! through a redirect, objects are copied up on first change, a copied-up hard-link group
//! stays one inode.
//!
//! [`ops`] holds the operations (one `Result` each); this file the state they share and the
//! thin FUSE adapter. Metadata operations run under one lock that is never held across the
//! network or a wait for the union, and copy-ups wait per inode ([`locking`]); reads and
//! writes of open upper files go to their file without it (or bypass the daemon with
//! passthrough). Nodes go when the kernel forgets them ([`nodes`]).

mod attrs;
mod copyup;
mod data;
mod killpriv;
mod locking;
mod merged;
mod nodes;
mod ops;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Condvar, Mutex};

use crate::upper::UpperDir;
use crate::view::{ImageView, OpError};
use nodes::Nodes;

/// How long the kernel may keep names and attributes: everything that changes them comes
/// through this daemon, which answers with the new attributes.
const TTL: Duration = Duration::from_secs(1);

/// What the operations share under the lock (see [`locking`]).
struct State {
    nodes: Nodes,
    handles: data::Handles,
}

/// A writable mount.
pub struct OverlayFs {
    lower: Arc<ImageView>,
    upper: UpperDir,
    state: Mutex<State>,
    /// Signalled (with `state`) when a copy-up that ran without the lock has landed.
    copied: Condvar,
    /// Whether the kernel took FUSE passthrough at init.
    passthrough: bool,
    /// Whether to ask for it (`--no-passthrough` says no).
    want_passthrough: bool,
    /// Whether the kernel took FUSE_HANDLE_KILLPRIV_V2: set-ID bits are then this daemon's
    /// to clear on truncate ([`killpriv`]).
    killpriv: bool,
    /// Open descriptors of upper directories by node, so operations need not walk the path
    /// from the upper root each time (checked against the node's upper inode at each use).
    dirs: parking_lot::Mutex<std::collections::HashMap<u64, std::os::fd::OwnedFd>>,
}

/// Errors of the writable layer's operations.
#[derive(Debug)]
pub enum OvlError {
    /// From the lower (image) side.
    Lower(OpError),
    /// An errno to give as is.
    Errno(rustix::io::Errno),
    /// Not an error: the operation must run again once this is done without the lock
    /// ([`OverlayFs::locked`] handles it; it never reaches the kernel).
    Retry(locking::Retry),
}

impl From<OpError> for OvlError {
    fn from(e: OpError) -> Self {
        OvlError::Lower(e)
    }
}

impl From<rustix::io::Errno> for OvlError {
    fn from(e: rustix::io::Errno) -> Self {
        OvlError::Errno(e)
    }
}

impl From<std::io::Error> for OvlError {
    fn from(e: std::io::Error) -> Self {
        OvlError::Errno(rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
    }
}

/// The one mapping from the writable layer's errors to errno.
fn errno(e: &OvlError) -> Errno {
    match e {
        OvlError::Lower(e) => crate::view::errno(e),
        OvlError::Errno(e) => Errno::from_i32(e.raw_os_error()),
        OvlError::Retry(r) => {
            tracing::error!(?r, "an operation asked to run again outside OverlayFs::locked");
            Errno::EIO
        }
    }
}

type Result<T> = std::result::Result<T, OvlError>;

fn time_of(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// FUSE attributes of an upper object, shown as inode `ino`.
fn attr_of(ino: u64, st: &rustix::fs::Stat) -> FileAttr {
    use rustix::fs::FileType as T;
    let kind = match T::from_raw_mode(st.st_mode) {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time_of(st.st_atime, st.st_atime_nsec as i64),
        mtime: time_of(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time_of(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: time_of(st.st_ctime, st.st_ctime_nsec as i64),
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The reply to a lookup of a name that is not there, as an entry the kernel can keep
/// (node 0: a negative entry).
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl OverlayFs {
    /// The merged view of `lower` under `upper`.
    pub fn new(lower: Arc<ImageView>, upper: UpperDir, want_passthrough: bool) -> std::io::Result<OverlayFs> {
        let root = rustix::fs::fstat(upper.root())?;
        // Created objects get exactly the mode asked for (the kernel has applied the umask).
        rustix::process::umask(rustix::fs::Mode::empty());
        Ok(OverlayFs {
            lower,
            upper,
            state: Mutex::new(State {
                nodes: Nodes::new(root.st_ino),
                handles: data::Handles::default(),
            }),
            copied: Condvar::new(),
            passthrough: false,
            want_passthrough,
            killpriv: false,
            dirs: parking_lot::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The upper directory.
    pub fn upper_path(&self) -> &Path {
        self.upper.path()
    }

    /// The kernel forgot `count` lookups of `ino` (FUSE `forget`).
    pub fn op_forget(&self, ino: u64, count: u64) {
        let mut st = self.state.lock();
        st.nodes.forget(ino, count);
        self.sweep(&mut st);
    }

    /// How many nodes the mount holds (the root included).
    pub fn node_count(&self) -> usize {
        self.state.lock().nodes.len()
    }
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        self.passthrough = self.want_passthrough
            && rustix::process::geteuid().is_root()
            && config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.killpriv = config
            .add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_ok();
        tracing::info!(passthrough = self.passthrough, killpriv_v2 = self.killpriv, upper = %self.upper.path().display(), "writable FUSE session started");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.op_lookup(parent.0, name_bytes(name)) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            // A negative entry the kernel may keep: every change of the name comes through
            // this mount (and the union's "not there" is final), so it saves the second
            // lookup of a `stat`-then-create (tar, cp).
            Ok(None) => reply.entry(&TTL, &negative_entry(), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // (batch_forget: fuser 0.18's default calls this per node; its `ForgetOne` is private.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.op_forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.op_getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = ops::AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.op_setattr_as(ino.0, &change, req.pid()) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.op_readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let what = ops::New::Node { mode, rdev };
        match self.op_create(req, parent.0, name_bytes(name), what) {
            Ok((attr, _)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        match self.op_create(req, parent.0, name_bytes(name), ops::New::Dir { mode }) {
            Ok((attr, _)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let what = ops::New::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        };
        match self.op_create(req, parent.0, name_bytes(link_name), what) {
            Ok((attr, _)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.op_create(req, parent.0, name_bytes(name), ops::New::File { mode }) {
            Ok((attr, Some(fd))) => {
                let _ = flags;
                match self.op_open_created(attr.ino.0, fd, |f| reply.open_backing(f)) {
                    Ok((fh, flags, Some(id))) => {
                        reply.created_passthrough(&TTL, &attr, Generation(0), FileHandle(fh), flags, &id)
                    }
                    Ok((fh, flags, None)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), flags),
                    Err(e) => {
                        // The kernel is not given the node after all.
                        self.op_forget(attr.ino.0, 1);
                        reply.error(errno(&e))
                    }
                }
            }
            Ok((_, None)) => reply.error(Errno::EIO),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.op_remove(parent.0, name_bytes(name), false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.op_remove(parent.0, name_bytes(name), true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.op_rename(
            parent.0,
            name_bytes(name),
            newparent.0,
            name_bytes(newname),
            flags.bits(),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        match self.op_link(ino.0, newparent.0, name_bytes(newname)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let trunc = flags.0 & data::O_TRUNC != 0;
        let opened = self.before_write(ino.0, trunc, req.pid());
        match opened.and_then(|()| self.op_open(ino.0, flags.0, |f| reply.open_backing(f))) {
            Ok((fh, flags, Some(id))) => reply.opened_passthrough(FileHandle(fh), flags, &id),
            Ok((fh, flags, None)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.op_read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let written = self.before_write(ino.0, kill, req.pid());
        match written.and_then(|()| self.op_write(ino.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is buffered here (writes are written when they arrive) and locks are the
        // kernel's: ENOSYS tells the kernel to stop sending FLUSH at every close.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.op_fsync(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.op_fallocate(ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.op_release(ino.0, fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.op_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.with_listing(ino.0, fh.0, |entries| {
            for (i, (name, child, kind)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*child), (i + 1) as u64, *kind, OsStr::from_bytes(name)) {
                    break;
                }
            }
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state.lock().handles.listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.op_fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::fstatvfs(self.upper.root()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&OvlError::Errno(e))),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.op_setxattr(ino.0, name_bytes(name), Some((value, flags))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.op_setxattr(ino.0, name_bytes(name), None) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::view::reply_sized(
            reply,
            size,
            self.op_getxattr(ino.0, name_bytes(name)).map_err(|e| errno(&e)),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::view::reply_sized(reply, size, self.op_listxattr(ino.0).map_err(|e| errno(&e)));
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        match self.op_ioctl(ino.0, cmd, in_data) {
            Some(Ok(out)) => reply.ioctl(0, &out),
            Some(Err(e)) => reply.error(errno(&e)),
            None => self.lower.reply_unsupported_ioctl(cmd, reply),
        }
    }
}
