//! The FUSE adapter: decode a request, call an `ops` function returning `Result`, reply.
//! [`errno`] is the one place errors become error numbers.
//!
//! Layers are immutable, so entries and attributes get long kernel timeouts and files keep
//! their page cache across opens; writes are refused with EROFS. While plain layers are still
//! streaming, lookups and listings wait for the [`LiveUnion`] to settle them, and attributes
//! get a short lifetime.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::fetch::{FetchError, Fetcher, LayerSource};
use crate::model::Chunk;
use crate::model::EntryKind;
use crate::union::live::{LiveError, LiveUnion};
use crate::union::Node;

/// Kernel cache lifetime for entries and attributes: the image never changes.
const TTL: Duration = Duration::from_secs(3600);
/// The lifetime while the union is still growing (link counts may still change).
const GROWING_TTL: Duration = Duration::from_secs(1);
/// Block size reported.
const BLOCK_SIZE: u32 = 4096;
/// Chunks past the end of a read fetched along with it (in the same merged request): a file
/// being read is usually read on, and one round trip more costs more than the bytes.
const READAHEAD_BYTES: u64 = 1 << 20;
/// Kernel readahead asked for.
const KERNEL_READAHEAD_BYTES: u32 = 1 << 20;

/// Why an operation failed.
#[derive(Debug)]
pub enum OpError {
    /// No such entry.
    NotFound,
    /// Not a directory.
    NotDir,
    /// Not a symlink / wrong kind.
    Invalid,
    /// The image is read-only.
    ReadOnly,
    /// No such xattr.
    NoXattr,
    /// The caller's buffer is too small.
    Range,
    /// Chunk data could not be had.
    Fetch(FetchError),
    /// A streaming layer could not settle the answer.
    Live(LiveError),
    /// Local I/O failed.
    Io(std::io::Error),
}

/// The one mapping from errors to errno.
pub fn errno(e: &OpError) -> Errno {
    match e {
        OpError::NotFound => Errno::ENOENT,
        OpError::NotDir => Errno::ENOTDIR,
        OpError::Invalid => Errno::EINVAL,
        OpError::ReadOnly => Errno::EROFS,
        OpError::NoXattr => Errno::ENODATA,
        OpError::Range => Errno::ERANGE,
        OpError::Fetch(_) | OpError::Io(_) | OpError::Live(_) => Errno::EIO,
    }
}

/// A mounted image.
pub struct ImageFs {
    live: Arc<LiveUnion>,
    sources: Vec<LayerSource>,
    fetcher: Arc<Fetcher>,
    /// Whether the kernel took FUSE passthrough at init.
    passthrough: bool,
    /// Whether to ask for it (`--no-passthrough` says no).
    want_passthrough: bool,
    backing: parking_lot::Mutex<Backing>,
}

/// Open handles, when passthrough is on. The kernel wants every open of an inode in one mode
/// while any is open: the same backing id for all passthrough opens, and no passthrough open
/// while the inode is open through the page cache (it fails that open with EIO) — so a file
/// that became local while a reader had it open stays served by reads until it is closed.
#[derive(Default)]
struct Backing {
    by_handle: std::collections::HashMap<u64, Arc<fuser::BackingId>>,
    by_inode: std::collections::HashMap<u64, std::sync::Weak<fuser::BackingId>>,
    /// Handles served by reads: handle → inode, and open count per inode.
    cached_handles: std::collections::HashMap<u64, u64>,
    cached_opens: std::collections::HashMap<u64, usize>,
    next_fh: u64,
}

impl Backing {
    fn new_fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    /// A handle served by reads.
    fn open_cached(&mut self, ino: u64) -> u64 {
        let fh = self.new_fh();
        self.cached_handles.insert(fh, ino);
        *self.cached_opens.entry(ino).or_default() += 1;
        fh
    }

    fn release(&mut self, fh: u64) {
        if self.by_handle.remove(&fh).is_some() {
            return;
        }
        if let Some(ino) = self.cached_handles.remove(&fh) {
            if let std::collections::hash_map::Entry::Occupied(mut n) = self.cached_opens.entry(ino) {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
    }
}

/// What a read needs of a file, copied out of the union's lock.
struct FilePlan {
    layer: usize,
    size: u64,
    /// The whole file's digest, when it is assembled from several chunks.
    assembled: Option<[u8; 32]>,
    /// Chunks from the first one the read needs to the last one it may read ahead into.
    chunks: Vec<Chunk>,
    /// How many of `chunks` the read itself needs.
    needed: usize,
    /// Every chunk digest of the file, when the read reaches its end and it is assembled.
    all_digests: Option<Vec<[u8; 32]>>,
}

/// The FUSE file type of an entry kind.
pub(crate) fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::Regular | EntryKind::HardLink => FileType::RegularFile,
        EntryKind::Directory => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
    }
}

fn time_of((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl ImageFs {
    /// A filesystem over a merged image.
    pub fn new(live: Arc<LiveUnion>, sources: Vec<LayerSource>, fetcher: Arc<Fetcher>) -> ImageFs {
        ImageFs {
            live,
            sources,
            fetcher,
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

    /// Whether passthrough will be asked for.
    pub fn wants_passthrough(&self) -> bool {
        self.want_passthrough
    }

    /// A local file holding exactly the bytes of file `ino`, if there is one: the chunk of a
    /// one-chunk file, or the assembled copy of a larger one.
    fn local_copy(&self, ino: INodeNo) -> Option<std::path::PathBuf> {
        let store = self.fetcher.store();
        let path = self.live.read(|st| {
            let n = st.union.get(ino.0)?;
            let (layer, entry) = n.source?;
            let index = &st.layers[layer];
            let e = &index.entries[entry];
            match index.chunks_of(e) {
                [one] if one.kind == crate::model::ChunkKind::Data => Some(store.path(&one.digest)),
                [_, _, ..] => e.digest.map(|d| store.assembled_path(&d)),
                _ => None,
            }
        })?;
        path.exists().then_some(path)
    }

    /// Open file `ino` when passthrough is on: to its local copy if it has one (and is not open
    /// through the page cache already), else a handle served by reads.
    fn open_handle(&self, ino: INodeNo, reply: ReplyOpen) {
        let mut backing = self.backing.lock();
        let id = match backing.by_inode.get(&ino.0).and_then(std::sync::Weak::upgrade) {
            Some(id) => id,
            None => {
                let local = if backing.cached_opens.contains_key(&ino.0) {
                    None
                } else {
                    self.local_copy(ino)
                };
                let opened = match local {
                    Some(path) => std::fs::File::open(&path).and_then(|f| reply.open_backing(f)),
                    None => Err(std::io::Error::other("not local, or open through the page cache")),
                };
                match opened {
                    Ok(id) => {
                        let id = Arc::new(id);
                        backing.by_inode.insert(ino.0, Arc::downgrade(&id));
                        id
                    }
                    Err(e) => {
                        tracing::trace!(error = %e, "no passthrough; serving reads");
                        let fh = backing.open_cached(ino.0);
                        return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                }
            }
        };
        let fh = backing.new_fh();
        backing.by_handle.insert(fh, id.clone());
        backing.by_inode.retain(|_, w| w.strong_count() > 0);
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
    }

    /// Run `f` on node `ino`.
    pub(crate) fn with_node<R>(&self, ino: INodeNo, f: impl FnOnce(&Node) -> R) -> Result<R, OpError> {
        self.live.read(|st| st.union.get(ino.0).map(f)).ok_or(OpError::NotFound)
    }

    fn ttl(&self) -> &'static Duration {
        if self.live.is_complete() {
            &TTL
        } else {
            &GROWING_TTL
        }
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let t = time_of(n.mtime());
        let size = match n.kind {
            EntryKind::Symlink => n.link.len() as u64,
            EntryKind::Directory => BLOCK_SIZE as u64,
            _ => n.size,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(n.kind),
            perm: (n.mode & 0o7777) as u16,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: rustix::fs::makedev(n.dev_major, n.dev_minor) as u32,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// `lookup`
    pub fn op_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, OpError> {
        if self.with_node(parent, |p| p.kind)? != EntryKind::Directory {
            return Err(OpError::NotDir);
        }
        self.live
            .lookup(parent.0, name.as_bytes(), |u, child| {
                child.map(|ino| self.attr(ino, u.node(ino)))
            })
            .map_err(OpError::Live)?
            .ok_or(OpError::NotFound)
    }

    /// What reading `offset..offset+size` of file `ino` needs; None: nothing to read.
    fn plan(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Option<FilePlan>, OpError> {
        self.live.read(|st| {
            let n = st.union.get(ino.0).ok_or(OpError::NotFound)?;
            let Some((layer, entry)) = n.source else {
                return if n.kind == EntryKind::Regular {
                    Ok(None)
                } else {
                    Err(OpError::Invalid)
                };
            };
            let end = (offset + size as u64).min(n.size);
            if offset >= end {
                return Ok(None);
            }
            let index = &st.layers[layer];
            let e = &index.entries[entry];
            let chunks = index.chunks_of(e);
            let first = chunks.partition_point(|c| c.file_offset + c.len <= offset);
            let needed = chunks.partition_point(|c| c.file_offset < end);
            // Read ahead only when this read starts a request of its own: otherwise the
            // chunks are already there or on their way, and waiting for them is all there is.
            let wanted = if chunks[first..needed].iter().any(|c| self.fetcher.is_missing(c)) {
                chunks.partition_point(|c| c.file_offset < end.saturating_add(READAHEAD_BYTES))
            } else {
                needed
            };
            let assembled = e.digest.filter(|_| e.chunk_count > 1);
            Ok(Some(FilePlan {
                layer,
                size: n.size,
                assembled,
                chunks: chunks[first..wanted].to_vec(),
                needed: needed - first,
                all_digests: (assembled.is_some() && end == n.size).then(|| chunks.iter().map(|c| c.digest).collect()),
            }))
        })
    }

    /// `read`: the bytes of a file range, fetching missing chunks.
    pub fn op_read(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, OpError> {
        let Some(plan) = self.plan(ino, offset, size)? else {
            return Ok(Vec::new());
        };
        let end = (offset + size as u64).min(plan.size);
        let data = self.read_chunks(&plan, offset, end)?;
        if let (Some(file_digest), Some(digests)) = (plan.assembled, plan.all_digests) {
            // The file has been read to its end: if every chunk is here, keep one copy of it
            // whole, so later reads (this mount's and the next) are one pread.
            // In the background: the read that finished the file does not wait for the copy.
            let store = self.fetcher.store().clone();
            std::thread::spawn(move || {
                if let Err(e) = store.assemble(&file_digest, &digests) {
                    tracing::debug!(error = %e, "could not assemble a file");
                }
            });
        }
        Ok(data)
    }

    /// The bytes `offset..end` of a file from its chunks, fetching missing ones.
    fn read_chunks(&self, plan: &FilePlan, offset: u64, end: u64) -> Result<Vec<u8>, OpError> {
        let layer = plan.layer;
        let mut out = vec![0u8; (end - offset) as usize];
        self.fetcher
            .ensure_all(&self.sources[layer], &plan.chunks)
            .map_err(OpError::Fetch)?;
        for c in &plan.chunks[..plan.needed] {
            let from = offset.max(c.file_offset);
            let to = end.min(c.file_offset + c.len);
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            let store = self.fetcher.store();
            let got = match store.read_at(&c.digest, from - c.file_offset, dst) {
                // Evicted since it was checked (another process collected the cache): fetch again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.fetcher.ensure(&self.sources[layer], c).map_err(OpError::Fetch)?;
                    store.read_at(&c.digest, from - c.file_offset, dst)
                }
                r => r,
            }
            .map_err(OpError::Io)?;
            if got != dst.len() {
                return Err(OpError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cached chunk is short",
                )));
            }
        }
        Ok(out)
    }

    /// Serve a read from the assembled copy of a multi-chunk file, if there is one, into a
    /// per-thread buffer (no allocation or zeroing per read). Gives the reply back if not.
    fn read_assembled(&self, ino: INodeNo, offset: u64, size: u32, reply: ReplyData) -> Option<ReplyData> {
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let found = self.live.read(|st| {
            let n = st.union.get(ino.0)?;
            let (layer, entry) = n.source?;
            let e = &st.layers[layer].entries[entry];
            e.digest.filter(|_| e.chunk_count > 1).map(|d| (d, n.size))
        });
        let Some((digest, file_size)) = found else {
            return Some(reply);
        };
        let end = (offset + size as u64).min(file_size);
        if offset >= end {
            return Some(reply);
        }
        let len = (end - offset) as usize;
        BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < len {
                b.resize(len, 0);
            }
            match self.fetcher.store().read_assembled(&digest, offset, &mut b[..len]) {
                Ok(Some(got)) if got == len => {
                    reply.data(&b[..len]);
                    None
                }
                _ => Some(reply),
            }
        })
    }

    /// A directory's listing from position `offset` (`.` and `..` first), once the union is
    /// whole: `add(union, child inode, next offset, name)` until it says the reply is full.
    fn list(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(&crate::union::Union, u64, u64, &[u8]) -> bool,
    ) -> Result<(), OpError> {
        self.live.wait_complete().map_err(OpError::Live)?;
        self.live.read(|st| {
            let u = &st.union;
            let n = u.get(ino.0).ok_or(OpError::NotFound)?;
            if n.kind != EntryKind::Directory {
                return Err(OpError::NotDir);
            }
            let dots = [(ino.0, &b"."[..]), (n.parent, &b".."[..])];
            let children = n.children.iter().map(|(name, c)| (*c, name.as_slice()));
            for (i, (child, name)) in dots.into_iter().chain(children).enumerate().skip(offset as usize) {
                if add(u, child, (i + 1) as u64, name) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// The attributes of union node `ino` (for the writable layer's lower side).
    pub(crate) fn lower_attr(&self, ino: u64) -> Result<FileAttr, OpError> {
        self.with_node(INodeNo(ino), |n| self.attr(ino, n))
    }

    /// The kind of union node `ino`.
    pub(crate) fn lower_kind(&self, ino: u64) -> Result<EntryKind, OpError> {
        self.with_node(INodeNo(ino), |n| n.kind)
    }

    /// A symlink's target.
    pub(crate) fn lower_link(&self, ino: u64) -> Result<Vec<u8>, OpError> {
        self.with_node(INodeNo(ino), |n| n.link.clone())
    }

    /// The xattrs of union node `ino`.
    pub(crate) fn lower_xattrs(&self, ino: u64) -> Result<crate::upper::Xattrs, OpError> {
        self.with_node(INodeNo(ino), |n| n.xattrs.clone())
    }

    /// The child `name` of union directory `parent`, once that answer is final.
    pub(crate) fn lower_child(&self, parent: u64, name: &[u8]) -> Result<Option<u64>, OpError> {
        self.live.lookup(parent, name, |_, child| child).map_err(OpError::Live)
    }

    /// The children of union directory `ino` (once the union is whole).
    pub(crate) fn lower_children(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64)>, OpError> {
        self.live.wait_complete().map_err(OpError::Live)?;
        self.with_node(INodeNo(ino), |n| {
            n.children.iter().map(|(k, v)| (k.clone(), *v)).collect()
        })
    }

    /// The names from the root to union directory `ino`.
    pub(crate) fn lower_path(&self, ino: u64) -> Option<Vec<Vec<u8>>> {
        self.live.read(|st| {
            st.union
                .path_of(ino)
                .map(|p| p.components().map(<[u8]>::to_vec).collect())
        })
    }

    /// Every (parent, name) of union node `ino` (the names of a hard-link group).
    pub(crate) fn lower_names(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>, OpError> {
        self.live.wait_complete().map_err(OpError::Live)?;
        Ok(self.live.read(|st| {
            let u = &st.union;
            let mut out = Vec::new();
            for dir in 1..=u.len() as u64 {
                let n = u.node(dir);
                if n.kind == EntryKind::Directory {
                    out.extend(
                        n.children
                            .iter()
                            .filter(|(_, c)| **c == ino)
                            .map(|(k, _)| (dir, k.clone())),
                    );
                }
            }
            out
        }))
    }

    /// `getxattr`: one value.
    pub fn op_getxattr(&self, ino: INodeNo, name: &OsStr) -> Result<Vec<u8>, OpError> {
        self.with_node(ino, |n| {
            n.xattrs
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|(_, v)| v.clone())
        })?
        .ok_or(OpError::NoXattr)
    }

    /// `listxattr`: NUL-terminated names.
    pub fn op_listxattr(&self, ino: INodeNo) -> Result<Vec<u8>, OpError> {
        self.with_node(ino, |n| {
            let mut out = Vec::new();
            for (k, _) in &n.xattrs {
                out.extend_from_slice(k);
                out.push(0);
            }
            out
        })
    }
}

/// Answer an xattr request: the size when asked for it, the bytes when they fit, else ERANGE.
pub(crate) fn reply_sized(reply: ReplyXattr, size: u32, data: Result<Vec<u8>, Errno>) {
    match data {
        Ok(d) if size == 0 => reply.size(d.len() as u32),
        Ok(d) if d.len() <= size as usize => reply.data(&d),
        Ok(_) => reply.error(errno(&OpError::Range)),
        Err(e) => reply.error(e),
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
        match self.op_lookup(parent, name) {
            Ok(attr) => reply.entry(self.ttl(), &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with_node(ino, |n| self.attr(ino.0, n)) {
            Ok(attr) => reply.attr(self.ttl(), &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with_node(ino, |n| (n.kind == EntryKind::Symlink).then(|| n.link.clone())) {
            Ok(Some(link)) => reply.data(&link),
            Ok(None) => reply.error(errno(&OpError::Invalid)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & (libc_flags::O_ACCMODE) != libc_flags::O_RDONLY || flags.0 & libc_flags::O_TRUNC != 0 {
            return reply.error(errno(&OpError::ReadOnly));
        }
        match self.with_node(ino, |_| ()) {
            Err(e) => reply.error(errno(&e)),
            Ok(()) if self.passthrough => self.open_handle(ino, reply),
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
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
        let Some(reply) = self.read_assembled(ino, offset, size, reply) else {
            return;
        };
        match self.op_read(ino, offset, size) {
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

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with_node(ino, |n| n.kind) {
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
        let listed = self.list(ino, offset, |u, child, next, name| {
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
        let listed = self.list(ino, offset, |u, child, next, name| {
            let attr = self.attr(child, u.node(child));
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
        let files = self.live.read(|st| st.union.len()) as u64;
        reply.statfs(0, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_sized(reply, size, self.op_getxattr(ino, name).map_err(|e| errno(&e)));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_sized(reply, size, self.op_listxattr(ino).map_err(|e| errno(&e)));
    }
}

/// The open(2) flag bits the adapter looks at (Linux values).
mod libc_flags {
    pub const O_ACCMODE: i32 = 0o3;
    pub const O_RDONLY: i32 = 0;
    pub const O_TRUNC: i32 = 0o1000;
}
