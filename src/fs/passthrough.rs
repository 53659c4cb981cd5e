//! FUSE passthrough bookkeeping: which handles have a backing file, and which inodes are open
//! through the page cache (the kernel wants every open of an inode in one mode).

use std::sync::Arc;

use fuser::{FileHandle, FopenFlags, INodeNo, ReplyOpen};

use crate::view::ImageView;

/// Open handles, when passthrough is on. The kernel wants every open of an inode in one mode
/// while any is open: the same backing id for all passthrough opens, and no passthrough open
/// while the inode is open through the page cache (it fails that open with EIO) — so a file
/// that became local while a reader had it open stays served by reads until it is closed.
#[derive(Default)]
pub(super) struct Backing {
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

    pub(super) fn release(&mut self, fh: u64) {
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

impl Backing {
    /// Open file `ino` when passthrough is on: to its local copy if it has one (and is not open
    /// through the page cache already), else a handle served by reads.
    pub(super) fn open(&mut self, view: &ImageView, ino: INodeNo, reply: ReplyOpen) {
        let backing = self;
        let id = match backing.by_inode.get(&ino.0).and_then(std::sync::Weak::upgrade) {
            Some(id) => id,
            None => {
                let local = if backing.cached_opens.contains_key(&ino.0) {
                    None
                } else {
                    view.local_copy(ino)
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
                        view.record_open(ino, false);
                        let fh = backing.open_cached(ino.0);
                        return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                }
            }
        };
        view.record_open(ino, true);
        let fh = backing.new_fh();
        backing.by_handle.insert(fh, id.clone());
        backing.by_inode.retain(|_, w| w.strong_count() > 0);
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
    }
}
