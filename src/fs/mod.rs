//! The read-only FUSE adapter: decode a request, call the [`ImageView`], reply.
//!
//! Layers are immutable, so entries and attributes get long kernel timeouts and files keep
//! their page cache across opens; writes are refused with EROFS. While plain layers are still
//! streaming, lookups and listings wait for the union to settle them, and attributes get a
//! short lifetime. Files whose bytes are all local are opened with FUSE passthrough
//! ([`passthrough`]).

mod passthrough;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{
    FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::model::EntryKind;
use crate::view::{errno, file_type, reply_sized, ImageView, OpError, BLOCK_SIZE, TTL};
use passthrough::Backing;

/// Kernel readahead asked for.
const KERNEL_READAHEAD_BYTES: u32 = 1 << 20;

/// A mounted image, read-only.
pub struct ImageFs {
    view: Arc<ImageView>,
    /// No entry has an xattr: the kernel is told xattrs are not supported, so it stops asking
    /// (`ls -l` asks two per entry, and the kernel keeps no negative answers).
    no_xattrs: bool,
    /// Whether the kernel took FUSE passthrough at init.
    passthrough: bool,
    /// Whether to ask for it (`--no-passthrough` says no).
    want_passthrough: bool,
    backing: parking_lot::Mutex<Backing>,
}

impl ImageFs {
    /// A filesystem serving `view`.
    pub fn new(view: Arc<ImageView>) -> ImageFs {
        ImageFs {
            no_xattrs: view.has_no_xattrs(),
            view,
            passthrough: false,
            want_passthrough: true,
            backing: parking_lot::Mutex::new(Backing::default()),
        }
    }

    /// Never ask the kernel for FUSE passthrough (every read goes through the daemon).
    pub fn without_passthrough(mut self) -> ImageFs {
        self.want_passthrough = false;
        self
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_readahead(KERNEL_READAHEAD_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        // Listings come with attributes: one round trip per directory, not one per entry.
        let _ =
            config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO);
        // Reads of files whose bytes are all local go straight to the local copy (kernel ≥ 6.9,
        // CAP_SYS_ADMIN); depth 1 keeps the mount usable as an overlayfs lower layer.
        self.passthrough = self.want_passthrough
            && rustix::process::geteuid().is_root()
            && config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        tracing::info!(passthrough = self.passthrough, "FUSE session started");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.view.lookup(parent, name) {
            Ok(attr) => reply.entry(self.view.ttl(), &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.with_node(ino, |n| self.view.attr(ino.0, n)) {
            Ok(attr) => reply.attr(self.view.ttl(), &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .view
            .with_node(ino, |n| (n.kind == EntryKind::Symlink).then(|| n.link.clone()))
        {
            Ok(Some(link)) => reply.data(&link),
            Ok(None) => reply.error(errno(&OpError::Invalid)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & (libc_flags::O_ACCMODE) != libc_flags::O_RDONLY || flags.0 & libc_flags::O_TRUNC != 0 {
            return reply.error(errno(&OpError::ReadOnly));
        }
        match self.view.with_node(ino, |_| ()) {
            Err(e) => reply.error(errno(&e)),
            Ok(()) if self.passthrough => self.backing.lock().open(&self.view, ino, reply),
            Ok(()) => {
                self.view.record_open(ino, false);
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
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
        let Some(reply) = self.view.read_assembled(ino, offset, size, reply, |r, d| r.data(d)) else {
            return;
        };
        match self.view.read(ino, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::warn!(ino = ino.0, offset, error = ?e, "read failed");
                reply.error(errno(&e))
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        if fh.0 != 0 {
            self.backing.lock().release(fh.0);
        }
        reply.ok();
    }

    /// Nothing is written, so there is nothing to flush: ENOSYS tells the kernel never to ask
    /// again (one round trip per close saved), without fuser's warning.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: fuser::ReplyEmpty) {
        reply.error(fuser::Errno::ENOSYS);
    }

    /// SEEK_DATA/SEEK_HOLE: ENOSYS makes the kernel answer them itself from then on (all of a
    /// file is data), which is what this view would say; kernel overlayfs asks when it copies
    /// a lower file up. Without fuser's warning.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.view.with_node(ino, |n| n.kind) {
            // Directories never change: the kernel may keep their listings.
            Ok(EntryKind::Directory) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(errno(&OpError::NotDir)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.view.list(ino, offset, |u, child, next, name| {
            reply.add(
                INodeNo(child),
                next,
                file_type(u.node(child).kind),
                OsStr::from_bytes(name),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let listed = self.view.list(ino, offset, |u, child, next, name| {
            let attr = self.view.attr(child, u.node(child));
            reply.add(
                INodeNo(child),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &attr,
                Generation(0),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.view.node_count() as u64;
        reply.statfs(0, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            return reply.error(fuser::Errno::ENOSYS);
        }
        reply_sized(reply, size, self.view.getxattr(ino, name).map_err(|e| errno(&e)));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            return reply.error(fuser::Errno::ENOSYS);
        }
        reply_sized(reply, size, self.view.listxattr(ino).map_err(|e| errno(&e)));
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: fuser::FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // An image's files carry no inode flags (a layer has no place for them): asked for
        // them (by lsattr, or by kernel overlayfs copying a lower file up), all are clear.
        const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
        const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
        match cmd {
            FS_IOC_GETFLAGS | FS_IOC_FSGETXATTR => {
                let size = (cmd >> 16) & 0x3fff;
                reply.ioctl(0, &vec![0; size.min(out_size) as usize]);
            }
            _ => self.view.reply_unsupported_ioctl(cmd, reply),
        }
    }
}

/// The open(2) flag bits the adapter looks at (Linux values).
mod libc_flags {
    pub const O_ACCMODE: i32 = 0o3;
    pub const O_RDONLY: i32 = 0;
    pub const O_TRUNC: i32 = 0o1000;
}
