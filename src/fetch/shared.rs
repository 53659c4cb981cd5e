//! Fetching a chunk once per machine, not once per daemon: the `lamina mount` daemons, the
//! containerd snapshotter and the podman store share one cache directory, and a daemon about
//! to fetch a chunk locks one byte of `CACHE/locks/chunks.<x>` (x: the digest's first hex
//! digit), at an offset taken from the digest (an open-file-description lock: `fcntl(F_OFD_SETLK)`, released by the kernel
//! if the daemon dies). A daemon that finds the byte locked waits for the chunk to appear in
//! the store instead of fetching it, and fetches it itself only if the holder let go without
//! storing it, or its own deadline comes.
//!
//! Sixteen files for every lock: a lock file per chunk (created, locked, removed) was two
//! inode operations per chunk in one directory, and a tenth of a cold daemon's CPU; one file
//! made every lock scan all the others the kernel holds on it. Two chunks whose
//! offsets meet (62 bits of digest) share a lock: one may then be fetched twice, never wrongly
//! (the store's rename is atomic and every copy is verified).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::chunks::ChunkStore;
use crate::fetch::fetcher::{Fetcher, Flight, FlightGuard, LayerSource};
use crate::model::Chunk;

/// How often a waiter looks whether the holder is done.
const POLL: Duration = Duration::from_millis(10);

/// Locks on chunks being fetched, in one cache directory. Every lock of a process is on one
/// open file description, so this process's own locks never conflict with each other; a
/// second [`ChunkLocks::open`] contends like another process.
#[derive(Clone, Debug)]
pub struct ChunkLocks {
    files: Option<Arc<[File; SHARDS]>>,
}

/// Lock files.
const SHARDS: usize = 16;

/// A chunk this process is fetching; the lock goes when this is dropped.
#[derive(Debug)]
pub struct ChunkLock {
    held: Option<(Arc<[File; SHARDS]>, usize, i64)>,
}

impl Drop for ChunkLock {
    fn drop(&mut self) {
        if let Some((files, shard, at)) = &self.held {
            let _ = set_lock(&files[*shard], *at, libc::F_UNLCK);
        }
    }
}

/// What [`ChunkLocks::try_lock`] found.
#[derive(Debug)]
pub enum Locked {
    /// This process fetches the chunk.
    Mine(ChunkLock),
    /// Another process is fetching it.
    Elsewhere,
}

/// The byte that stands for a chunk, and its lock file.
fn offset_of(digest: &[u8; 32]) -> (usize, i64) {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (usize::from(digest[0] >> 4), (u64::from_le_bytes(first) >> 2) as i64)
}

/// Take (`F_WRLCK`, `F_RDLCK`) or give back (`F_UNLCK`) the lock on one byte, without waiting;
/// whether it was done.
#[allow(unsafe_code)] // fcntl: see the SAFETY note
fn set_lock(file: &File, at: i64, kind: libc::c_int) -> bool {
    // SAFETY: `flock` is plain data, fully initialised here (zeroed, then its fields set); the
    // descriptor is open for the whole call (`file` is borrowed); F_OFD_SETLK reads the struct
    // and does not keep the pointer.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = at;
        fl.l_len = 1;
        libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0
    }
}

impl ChunkLocks {
    /// Locks in `cache_root/locks/chunks.*` (created).
    pub fn open(cache_root: &Path) -> std::io::Result<ChunkLocks> {
        let dir = cache_root.join("locks");
        std::fs::create_dir_all(&dir)?;
        let open = |i: usize| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join(format!("chunks.{i:x}")))
        };
        let files: Vec<File> = (0..SHARDS).map(open).collect::<Result<_, _>>()?;
        let files: [File; SHARDS] = files.try_into().expect("SHARDS files");
        Ok(ChunkLocks {
            files: Some(Arc::new(files)),
        })
    }

    /// No locks (the cache directory refused them): every chunk counts as this process's.
    pub fn disabled() -> ChunkLocks {
        ChunkLocks { files: None }
    }

    /// Take the lock of `digest` if no other process holds it. Local trouble (locks not
    /// supported) counts as taken by this process: fetching twice is better than not at all.
    pub fn try_lock(&self, digest: &[u8; 32]) -> Locked {
        let Some(files) = &self.files else {
            return Locked::Mine(ChunkLock { held: None });
        };
        let (shard, at) = offset_of(digest);
        if set_lock(&files[shard], at, libc::F_WRLCK) {
            return Locked::Mine(ChunkLock {
                held: Some((files.clone(), shard, at)),
            });
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => Locked::Elsewhere,
            _ => Locked::Mine(ChunkLock { held: None }),
        }
    }

    /// Wait (blocking) until the other process holding `digest`'s lock is done or `deadline`
    /// comes; whether the chunk is in `store` then.
    pub fn wait_for(&self, digest: &[u8; 32], store: &ChunkStore, deadline: Instant) -> bool {
        let (shard, at) = offset_of(digest);
        loop {
            if store.contains(digest) {
                return true;
            }
            // Free when a shared lock can be had (given back at once).
            let free = self.files.as_ref().is_none_or(|f| {
                let f = &f[shard];
                set_lock(f, at, libc::F_RDLCK) && set_lock(f, at, libc::F_UNLCK)
            });
            if free || Instant::now() >= deadline {
                return store.contains(digest);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Fetcher {
    /// Take the machine-wide locks of the chunks this process is about to fetch; the chunks
    /// another process is fetching are waited for instead (and fetched here only if that
    /// process let go without storing them). Returns the chunks to fetch.
    pub(super) fn claim(
        self: &Arc<Self>,
        layer: &LayerSource,
        mine: Vec<(Chunk, Arc<Flight>)>,
        deadline: Instant,
    ) -> Vec<(Chunk, Arc<Flight>)> {
        let mut out = Vec::with_capacity(mine.len());
        for (chunk, flight) in mine {
            match self.locks.try_lock(&chunk.digest) {
                Locked::Mine(lock) => {
                    *flight.lock.lock() = Some(lock);
                    out.push((chunk, flight));
                }
                Locked::Elsewhere => {
                    let (me, layer) = (self.clone(), layer.clone());
                    let guard = FlightGuard::new(self, chunk.clone(), flight);
                    self.runtime.spawn(async move {
                        let (locks, store, digest) = (me.locks.clone(), me.store.clone(), chunk.digest);
                        let there = tokio::task::spawn_blocking(move || locks.wait_for(&digest, &store, deadline))
                            .await
                            .unwrap_or(false);
                        let result = if there { Ok(()) } else { me.fetch(&layer, &chunk).await };
                        guard.settle(result);
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_and_freed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (
            ChunkLocks::open(dir.path()).unwrap(),
            ChunkLocks::open(dir.path()).unwrap(),
        );
        let store = ChunkStore::open(dir.path()).unwrap();
        let d = [7u8; 32];
        let Locked::Mine(mine) = theirs.try_lock(&d) else {
            panic!("the first lock is the holder's");
        };
        // OFD locks belong to open files: a second open in this process contends like another
        // process, and another chunk's byte is free.
        assert!(matches!(ours.try_lock(&d), Locked::Elsewhere));
        assert!(matches!(ours.try_lock(&[8u8; 32]), Locked::Mine(_)));
        let locks = ours;
        let waited = std::thread::scope(|s| {
            let h = s.spawn(|| locks.wait_for(&d, &store, Instant::now() + Duration::from_secs(10)));
            std::thread::sleep(Duration::from_millis(50));
            drop(mine);
            h.join().unwrap()
        });
        assert!(!waited, "the holder stored nothing");
        assert!(matches!(locks.try_lock(&d), Locked::Mine(_)));
    }
}
