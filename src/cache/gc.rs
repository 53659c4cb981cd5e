//! Keeping the cache within its quota: least recently used chunks go first.
//!
//! "Used" is the chunk file's mtime: written when the chunk arrives, touched again by a reading
//! daemon at most once per `TOUCH_INTERVAL` (so a hot chunk costs one `utimensat` an hour).
//! Evicting a chunk that some daemon is reading is safe: an open file stays readable after
//! unlink, and a daemon that finds a chunk gone fetches it again — never wrong bytes.
//!
//! Except where it cannot: a plain (TOC-less) layer has no random access, so the chunks of
//! the plain layers of every live mount (its state file under `mounts/`, its daemon alive)
//! are pinned and never evicted. Chunks of a plain layer still streaming are not in an index
//! yet; they are the newest in the cache, so the last to go.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A chunk used again after this long gets its mtime refreshed.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(3600);
/// Eviction stops below this share of the quota, so it does not run again at once.
const LOW_WATER_PERCENT: u64 = 90;
/// Work files older than this are leftovers of a crashed process.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// What is in the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Chunk files (and assembled files).
    pub chunks: u64,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Whole blobs (converted layers).
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Layer indexes.
    pub indexes: u64,
    /// Their bytes.
    pub index_bytes: u64,
}

fn files(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            files(&e.path(), out);
        } else {
            out.push((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
}

/// Count what the cache at `root` holds.
pub fn usage(root: &Path) -> Usage {
    let count = |sub: &str| {
        let mut v = Vec::new();
        files(&root.join(sub), &mut v);
        (v.len() as u64, v.iter().map(|f| f.1).sum::<u64>())
    };
    let (chunks, chunk_bytes) = count("chunks");
    let (assembled, assembled_bytes) = count("files");
    let (chunks, chunk_bytes) = (chunks + assembled, chunk_bytes + assembled_bytes);
    let (blobs, blob_bytes) = count("blobs");
    let (indexes, index_bytes) = count("indexes");
    Usage {
        chunks,
        chunk_bytes,
        blobs,
        blob_bytes,
        indexes,
        index_bytes,
    }
}

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Chunks removed.
    pub chunks: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Stale work files removed.
    pub temp_files: u64,
}

/// Remove least recently used chunks until they take at most `max_bytes` (down to 90% of it),
/// and work files left by crashed processes.
pub fn collect(root: &Path, max_bytes: u64) -> Collected {
    let mut out = Collected::default();
    let mut tmp = Vec::new();
    files(&root.join("tmp"), &mut tmp);
    let now = SystemTime::now();
    for (path, _, mtime) in tmp {
        if now.duration_since(mtime).unwrap_or_default() > STALE_TMP && std::fs::remove_file(&path).is_ok() {
            out.temp_files += 1;
        }
    }
    // Chunks and assembled files share the quota; least recently used go first, whichever.
    let mut chunks = Vec::new();
    files(&root.join("chunks"), &mut chunks);
    let pins = pinned(root);
    chunks.retain(|(path, _, _)| {
        !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| pins.contains(n))
    });
    files(&root.join("files"), &mut chunks);
    let mut total: u64 = chunks.iter().map(|c| c.1).sum();
    if total <= max_bytes {
        return out;
    }
    let target = max_bytes / 100 * LOW_WATER_PERCENT;
    chunks.sort_by_key(|c| c.2);
    for (path, len, _) in chunks {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            out.chunks += 1;
            out.bytes += len;
        }
    }
    out
}

/// The chunks (hex digests) of the plain layers that live mounts serve.
fn pinned(root: &Path) -> HashSet<String> {
    let mut pins = HashSet::new();
    let Ok(mounts) = std::fs::read_dir(root.join("mounts")) else {
        return pins;
    };
    for m in mounts.flatten() {
        let Ok(text) = std::fs::read(m.path()) else { continue };
        let Ok(state) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        let alive = state["pid"]
            .as_u64()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            continue;
        }
        for layer in state["layers"].as_array().into_iter().flatten() {
            let Some(digest) = layer.as_str().and_then(|d| d.parse::<crate::digest::Digest>().ok()) else {
                continue;
            };
            let index_path = root.join("indexes").join(format!("{}.lidx", digest.hex()));
            let Ok(index) = crate::index::disk::load(&index_path) else {
                continue;
            };
            if index.codec == crate::model::ChunkCodec::Stream {
                pins.extend(index.chunks.iter().map(|c| hex::encode(c.digest)));
            }
        }
    }
    pins
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::chunks::ChunkStore;

    #[test]
    fn oldest_chunks_go_first_down_to_the_low_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let mut digests = Vec::new();
        for i in 0..10u8 {
            let data = vec![i; 1000];
            let mut d = [0u8; 32];
            hex::decode_to_slice(crate::digest::Digest::of(&data).hex(), &mut d).unwrap();
            store.put(&d, &data).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(store.path(&d))
                .unwrap()
                .set_modified(t)
                .unwrap();
            digests.push(d);
        }
        assert_eq!(usage(dir.path()).chunk_bytes, 10_000);
        assert_eq!(collect(dir.path(), 20_000), Collected::default());
        let c = collect(dir.path(), 6000);
        assert_eq!((c.chunks, c.bytes), (5, 5000));
        assert!(digests[..5].iter().all(|d| !store.contains(d)));
        assert!(digests[5..].iter().all(|d| store.contains(d)));
    }
}
