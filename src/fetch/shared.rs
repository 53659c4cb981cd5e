//! Fetching a chunk once per machine, not once per daemon: the `lamina mount` daemons, the
//! containerd snapshotter and the podman store share one cache directory, and a daemon about
//! to fetch a chunk takes an advisory lock on `CACHE/locks/<hex>` (flock, released by the
//! kernel if the daemon dies). A daemon that finds the lock taken waits for the chunk to
//! appear in the store instead of fetching it, and fetches it itself only if the holder let go
//! without storing it, or its own deadline comes.
//!
//! The lock file is removed by its holder when done; a daemon that opened it just before may
//! then hold a lock on a removed file while a third one locks a new file: the chunk is then
//! fetched twice, never wrongly (the store's rename is atomic and every copy is verified).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use crate::cache::chunks::ChunkStore;
use crate::fetch::fetcher::{Fetcher, Flight, FlightGuard, LayerSource};
use crate::model::Chunk;

/// How often a waiter looks whether the holder is done.
const POLL: Duration = Duration::from_millis(10);

/// Locks on chunks being fetched, in one cache directory.
#[derive(Clone, Debug)]
pub struct ChunkLocks {
    dir: PathBuf,
}

/// A chunk this process is fetching; the lock goes when this is dropped.
#[derive(Debug)]
pub struct ChunkLock {
    path: Option<PathBuf>,
    _file: Option<File>,
}

impl Drop for ChunkLock {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
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

impl ChunkLocks {
    /// Locks under `cache_root/locks` (created).
    pub fn open(cache_root: &Path) -> std::io::Result<ChunkLocks> {
        let dir = cache_root.join("locks");
        std::fs::create_dir_all(&dir)?;
        Ok(ChunkLocks { dir })
    }

    /// No locks (the cache directory refused them): every chunk counts as this process's.
    pub fn disabled() -> ChunkLocks {
        ChunkLocks { dir: PathBuf::new() }
    }

    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(digest))
    }

    /// Take the lock of `digest` if no other process holds it. Local trouble (no room for the
    /// lock file) counts as taken by this process: fetching twice is better than not at all.
    pub fn try_lock(&self, digest: &[u8; 32]) -> Locked {
        let path = self.path(digest);
        let opened = if self.dir.as_os_str().is_empty() {
            Err(std::io::Error::other("disabled"))
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let Ok(file) = opened else {
            return Locked::Mine(ChunkLock {
                path: None,
                _file: None,
            });
        };
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Locked::Mine(ChunkLock {
                path: Some(path),
                _file: Some(file),
            }),
            Err(_) => Locked::Elsewhere,
        }
    }

    /// Wait (blocking) until the other process holding `digest`'s lock is done or `deadline`
    /// comes; whether the chunk is in `store` then.
    pub fn wait_for(&self, digest: &[u8; 32], store: &ChunkStore, deadline: Instant) -> bool {
        let path = self.path(digest);
        loop {
            if store.contains(digest) {
                return true;
            }
            let free = match std::fs::File::open(&path) {
                Err(_) => true,
                Ok(f) => match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
                    Ok(()) => true,
                    Err(_) => false,
                },
            };
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
        let locks = ChunkLocks::open(dir.path()).unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let d = [7u8; 32];
        let Locked::Mine(mine) = locks.try_lock(&d) else {
            panic!("the first lock is this process's");
        };
        // flock locks belong to open files: a second open in this process contends like another process.
        assert!(matches!(locks.try_lock(&d), Locked::Elsewhere));
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
