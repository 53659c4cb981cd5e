//! How the writable mount's operations share its state without stalling each other.
//!
//! ```text
//!  FUSE worker ── locked(op) ──► state lock ──► op: node table, upper dir (local disk only)
//!                                    │              │ needs what would block?
//!                                    │              ▼
//!                                    │         Err(Retry::…)   (nothing changed that matters:
//!                                    │              │           copy-ups of parents are kept)
//!                                    ◄── unlocked ──┘
//!        settle: Lookup / Complete ─► wait for the growing union
//!                CopyUp(ino)       ─► mark ino copying, copy its bytes from the image
//!                                     (network), lock again, rename into place
//!                Wait(ino)         ─► sleep on `copied` until ino is no longer copying
//!        ──► run op again from the start
//! ```
//!
//! - **The state lock** (`OverlayFs::state`) guards the node table and the handle tables. It
//!   is held only for work on local disk (the upper directory) and on the image's metadata in
//!   memory — never across a read of lower file bytes (which may go to the registry) nor
//!   across a wait for the union of streaming plain layers. An operation that would need
//!   either returns [`Retry`]; [`OverlayFs::locked`] drops the lock, does the blocking part,
//!   and runs the operation again, which then finds it done. Operations are written so that
//!   everything before such a point is either read-only or an idempotent copy-up of a parent
//!   directory (which overlayfs also keeps when an operation fails).
//! - **Per-inode copy-up**: a node being copied up with data is marked `copying` (under the
//!   lock) for the time its bytes are fetched (without the lock). Reads, lookups, `stat` and
//!   listings of it see the lower object until the copy lands; anything that would change it
//!   (open for writing, truncate, chmod, xattrs, link, rename, another copy-up) waits on
//!   `copied` for that node only, then runs again. Other files are not held up at all.
//!   The copy lands at the node's *current* first name (it may have been moved meanwhile); if
//!   the node lost all its names, the copy is thrown away.
//! - **Lock order**: `state` → `dirs` (upper directory descriptors) → the view's own locks
//!   (union, fetcher). Nothing takes `state` while holding another of these. A thread waiting
//!   for a copy-up holds nothing (the condition variable releases `state`).

use parking_lot::MutexGuard;

use super::{OverlayFs, OvlError, Result, State};

/// What an operation needs done without the state lock before it can run.
#[derive(Debug)]
pub enum Retry {
    /// Copy node `ino` up with its bytes (or give a metacopy file its bytes).
    CopyUp(u64),
    /// Node `ino` is being copied up by another operation: wait for it to land.
    Wait(u64),
    /// The union's answer for `name` in lower directory `parent` is not final yet.
    Lookup(u64, Vec<u8>),
    /// The union of streaming layers must be whole (listings, hard-link groups).
    Complete,
}

impl From<Retry> for OvlError {
    fn from(r: Retry) -> Self {
        OvlError::Retry(r)
    }
}

impl OverlayFs {
    /// Run `op` under the state lock until it no longer asks for something to be done
    /// without it (see the module doc); nodes it left unused are dropped each time.
    pub(super) fn locked<T>(&self, mut op: impl FnMut(&mut State) -> Result<T>) -> Result<T> {
        loop {
            let mut st = self.state.lock();
            match op(&mut st) {
                // Not swept yet: the node to copy up may be one the operation registered; it
                // is marked `copying` (which keeps it) before the lock goes.
                Err(OvlError::Retry(why @ Retry::CopyUp(_))) => self.settle(st, why)?,
                Err(OvlError::Retry(why)) => {
                    self.sweep(&mut st);
                    self.settle(st, why)?
                }
                done => {
                    self.sweep(&mut st);
                    return done;
                }
            }
        }
    }

    /// Drop unused nodes and their cached directory descriptors.
    pub(super) fn sweep(&self, st: &mut State) {
        let gone = st.nodes.sweep();
        if !gone.is_empty() {
            let mut dirs = self.dirs.lock();
            for ino in gone {
                dirs.remove(&ino);
            }
        }
    }

    /// Do what `why` asks, releasing the lock `st` for anything that blocks.
    fn settle(&self, mut st: MutexGuard<'_, State>, why: Retry) -> Result<()> {
        match why {
            Retry::Wait(ino) => {
                while st.nodes.get(ino).is_some_and(|n| n.copying) {
                    self.copied.wait(&mut st);
                }
                Ok(())
            }
            Retry::Lookup(parent, name) => {
                drop(st);
                self.lower.child(parent, &name)?;
                Ok(())
            }
            Retry::Complete => {
                drop(st);
                Ok(self.lower.wait_complete()?)
            }
            Retry::CopyUp(ino) => match self.copy_up_unlocked(st, ino) {
                // Its own preconditions (a union wait, another copy-up of it): settle those
                // and let the operation ask again.
                Err(OvlError::Retry(why)) => self.settle(self.state.lock(), why),
                done => done,
            },
        }
    }
}
