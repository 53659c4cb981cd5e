//! The view of an image that every front door serves: metadata from the union, file bytes
//! through the fetcher and the chunk store. The read-only FUSE adapter (`fs`) and the writable
//! mount (`overlay`, as its lower side) both read the image only through an [`ImageView`];
//! [`errno`] is the one place their errors become error numbers.
//!
//! ```text
//! ImageView ── metadata: LiveUnion (lookups wait while plain layers stream) ── Node
//!           └─ bytes:    read.rs: plan (chunks + read-ahead + neighbours) ─► Fetcher ─► ChunkStore
//!                                 assembled copies of multi-chunk files, passthrough paths
//! ```

mod assemble;
mod neighbours;
mod read;
mod readahead;
pub mod record;
mod walk;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, ReplyXattr};

use crate::fetch::{FetchError, Fetcher, LayerSource};
use crate::model::{EntryKind, Xattrs};
use crate::union::live::{LiveError, LiveUnion};
use crate::union::Node;

/// Kernel cache lifetime for entries and attributes: the image never changes.
pub const TTL: Duration = Duration::from_secs(3600);
/// The lifetime while the union is still growing (link counts may still change).
const GROWING_TTL: Duration = Duration::from_secs(1);
/// Block size reported.
pub const BLOCK_SIZE: u32 = 4096;

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

/// A mounted image's view: the union and where its files' bytes come from.
pub struct ImageView {
    live: Arc<LiveUnion>,
    sources: Vec<LayerSource>,
    fetcher: Arc<Fetcher>,
    readahead: readahead::Readahead,
    walks: walk::Walks,
    assembler: assemble::Assembler,
    /// Files opened with passthrough at least once (read-ahead counts the first open only).
    passed: parking_lot::Mutex<std::collections::HashSet<u64>>,
    /// What the workload reads, for the image's access profile.
    pub recorder: record::Recorder,
    /// ioctl commands already logged as unsupported (each is logged once, not per call).
    ioctls_logged: parking_lot::Mutex<std::collections::HashSet<u32>>,
}

/// The FUSE file type of an entry kind.
pub fn file_type(k: EntryKind) -> FileType {
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

impl ImageView {
    /// A view over a merged image.
    pub fn new(live: Arc<LiveUnion>, sources: Vec<LayerSource>, fetcher: Arc<Fetcher>) -> ImageView {
        let readahead = readahead::Readahead::new(sources.len());
        ImageView {
            live,
            sources,
            assembler: assemble::Assembler::new(fetcher.store().clone()),
            fetcher,
            readahead,
            walks: walk::Walks::default(),
            passed: parking_lot::Mutex::new(std::collections::HashSet::new()),
            recorder: record::Recorder::default(),
            ioctls_logged: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Answer an ioctl neither front door implements (ENOSYS, as fuser does), logging each
    /// command number once: a stress run issues thousands.
    pub fn reply_unsupported_ioctl(&self, cmd: u32, reply: fuser::ReplyIoctl) {
        if self.ioctls_logged.lock().insert(cmd) {
            tracing::warn!(
                cmd = format_args!("{cmd:#x}"),
                "ioctl not implemented (logged once per command)"
            );
        }
        reply.error(fuser::Errno::ENOSYS);
    }

    /// The union this view serves.
    pub fn live(&self) -> &Arc<LiveUnion> {
        &self.live
    }

    /// File `ino` was opened (`whole`: with passthrough, its reads will not reach lamina).
    pub fn record_open(&self, ino: INodeNo, whole: bool) {
        let Some((layer, entry)) = self.live.read(|st| st.union.get(ino.0).and_then(|n| n.source)) else {
            return;
        };
        self.recorder.opened(layer, entry, whole);
        if whole {
            // Its reads will not reach lamina: the prefetched chunks of the file count as used.
            self.live.read(|st| {
                let index = &st.layers[layer];
                for c in index.chunks_of(&index.entries[entry]) {
                    self.fetcher.prefetch.note_used(&c.digest);
                }
            });
            self.passed_through(ino);
        }
    }

    /// Fetch nothing ahead, in blob order or in visiting order (`--prefetch none`).
    pub fn without_readahead(mut self) -> ImageView {
        self.readahead = readahead::Readahead::new(0);
        self.walks.off = true;
        self
    }

    /// Whether no entry of the image has an xattr — known only once every layer is merged
    /// (`false` while plain layers stream).
    pub fn has_no_xattrs(&self) -> bool {
        self.live.is_complete()
            && self
                .live
                .read(|st| (1..=st.union.len() as u64).all(|ino| st.union.node(ino).xattrs.is_empty()))
    }

    /// How many nodes the union has (for statfs).
    pub fn node_count(&self) -> usize {
        self.live.read(|st| st.union.len())
    }

    /// Run `f` on node `ino`.
    pub fn with_node<R>(&self, ino: INodeNo, f: impl FnOnce(&Node) -> R) -> Result<R, OpError> {
        self.live.read(|st| st.union.get(ino.0).map(f)).ok_or(OpError::NotFound)
    }

    /// How long the kernel may keep entries and attributes: long once the union is whole.
    pub fn ttl(&self) -> &'static Duration {
        if self.live.is_complete() {
            &TTL
        } else {
            &GROWING_TTL
        }
    }

    /// The FUSE attributes of node `n`, numbered `ino`.
    pub fn attr(&self, ino: u64, n: &Node) -> FileAttr {
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

    /// The attributes of `name` in directory `parent`, once that answer is final.
    pub fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, OpError> {
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

    /// A directory's listing from position `offset` (`.` and `..` first), once the union is
    /// whole: `add(union, child inode, next offset, name)` until it says the reply is full.
    pub fn list(
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
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, OpError> {
        self.with_node(INodeNo(ino), |n| self.attr(ino, n))
    }

    /// The kind of union node `ino`.
    pub fn kind(&self, ino: u64) -> Result<EntryKind, OpError> {
        self.with_node(INodeNo(ino), |n| n.kind)
    }

    /// A symlink's target.
    pub fn link(&self, ino: u64) -> Result<Vec<u8>, OpError> {
        self.with_node(INodeNo(ino), |n| n.link.clone())
    }

    /// The xattrs of union node `ino`.
    pub fn xattrs(&self, ino: u64) -> Result<Xattrs, OpError> {
        self.with_node(INodeNo(ino), |n| n.xattrs.clone())
    }

    /// The child `name` of union directory `parent`, once that answer is final.
    pub fn child(&self, parent: u64, name: &[u8]) -> Result<Option<u64>, OpError> {
        self.live.lookup(parent, name, |_, child| child).map_err(OpError::Live)
    }

    /// [`Self::child`] without waiting: `None` while the answer can still change (for
    /// callers that must not wait holding a lock of their own).
    pub fn child_now(&self, parent: u64, name: &[u8]) -> Result<Option<Option<u64>>, OpError> {
        self.live.lookup_now(parent, name).map_err(OpError::Live)
    }

    /// Whether the union is whole (no lookup or listing waits any more).
    pub fn is_complete(&self) -> bool {
        self.live.is_complete()
    }

    /// Wait until the union is whole.
    pub fn wait_complete(&self) -> Result<(), OpError> {
        self.live.wait_complete().map_err(OpError::Live)
    }

    /// The children of union directory `ino` (once the union is whole).
    pub fn children(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64)>, OpError> {
        self.live.wait_complete().map_err(OpError::Live)?;
        self.with_node(INodeNo(ino), |n| {
            n.children.iter().map(|(k, v)| (k.clone(), *v)).collect()
        })
    }

    /// The names from the root to union directory `ino`.
    pub fn path(&self, ino: u64) -> Option<Vec<Vec<u8>>> {
        self.live.read(|st| {
            st.union
                .path_of(ino)
                .map(|p| p.components().map(<[u8]>::to_vec).collect())
        })
    }

    /// Every (parent, name) of union node `ino` (the names of a hard-link group).
    pub fn names(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>, OpError> {
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

    /// One xattr value.
    pub fn getxattr(&self, ino: INodeNo, name: &OsStr) -> Result<Vec<u8>, OpError> {
        self.with_node(ino, |n| {
            n.xattrs
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|(_, v)| v.clone())
        })?
        .ok_or(OpError::NoXattr)
    }

    /// The xattr names, each NUL-terminated.
    pub fn listxattr(&self, ino: INodeNo) -> Result<Vec<u8>, OpError> {
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
pub fn reply_sized(reply: ReplyXattr, size: u32, data: Result<Vec<u8>, Errno>) {
    match data {
        Ok(d) if size == 0 => reply.size(d.len() as u32),
        Ok(d) if d.len() <= size as usize => reply.data(&d),
        Ok(_) => reply.error(errno(&OpError::Range)),
        Err(e) => reply.error(e),
    }
}
