//! The content-addressed chunk store: `CACHE/chunks/sha256/ab/<hex>`, one uncompressed chunk
//! per file, shared by every layer, image, mount and process on the machine.
//!
//! Invariant: a file in the store always holds exactly the bytes its name is the sha256 of —
//! bytes are checked, written under `tmp/` and renamed into place, so readers (other daemons
//! included) never see a partial or wrong chunk. Large chunks are streamed into their
//! temporary file ([`ChunkStore::put_from`]) and hashed on the way, never held whole. Chunks
//! of zeros need not be here: readers fill them in.

use std::io;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::index::LayerIndex;
use crate::model::{Chunk, ChunkKind};

/// Buffer between a streamed chunk and its temporary file.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// Open chunk files kept for reading: a sequential read touches each chunk many times, and
/// an open per touch cost half the read throughput.
const OPEN_FILES: usize = 512;

/// The chunk store inside a cache directory.
#[derive(Clone)]
pub struct ChunkStore {
    root: PathBuf,
    files: PathBuf,
    tmp: PathBuf,
    open: std::sync::Arc<parking_lot::Mutex<lru::LruCache<[u8; 32], std::sync::Arc<std::fs::File>>>>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore").field("root", &self.root).finish()
    }
}

impl ChunkStore {
    /// Open (creating) the store under `cache_root`.
    pub fn open(cache_root: &Path) -> io::Result<ChunkStore> {
        let root = cache_root.join("chunks/sha256");
        let files = cache_root.join("files/sha256");
        let tmp = cache_root.join("tmp");
        std::fs::create_dir_all(&files)?;
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&tmp)?;
        let open = lru::LruCache::new(std::num::NonZeroUsize::new(OPEN_FILES).expect("not zero"));
        Ok(ChunkStore {
            root,
            files,
            tmp,
            open: std::sync::Arc::new(parking_lot::Mutex::new(open)),
        })
    }

    /// A fresh name under `tmp/` for a file being written.
    fn temp_path(&self, kind: &str, digest: &[u8; 32]) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp.join(format!(
            "{kind}.{}.{}.{n}",
            hex::encode(&digest[..8]),
            std::process::id()
        ))
    }

    /// Where the chunk with this sha256 lives.
    pub fn path(&self, digest: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(digest);
        self.root.join(&hex[..2]).join(hex)
    }

    /// The cache directory the store is in.
    pub fn cache_root(&self) -> PathBuf {
        self.root
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| self.root.clone(), Path::to_path_buf)
    }

    /// Whether the chunk is present.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.open.lock().contains(digest) || self.path(digest).exists()
    }

    /// The share of a layer's file bytes that is in the store, in percent (100 for a layer
    /// without file bytes).
    pub fn local_percent(&self, index: &LayerIndex) -> f64 {
        let total: u64 = index.chunks.iter().map(|c| c.len).sum();
        let here: u64 = index
            .chunks
            .iter()
            .filter(|c| c.kind == ChunkKind::Zeros || self.contains(&c.digest))
            .map(|c| c.len)
            .sum();
        if total == 0 {
            100.0
        } else {
            100.0 * here as f64 / total as f64
        }
    }

    fn file(&self, digest: &[u8; 32]) -> io::Result<std::sync::Arc<std::fs::File>> {
        if let Some(f) = self.open.lock().get(digest) {
            return Ok(f.clone());
        }
        let file = std::fs::File::open(self.path(digest))?;
        // Mark it used, for least-recently-used eviction (at most once per interval).
        if let Ok(m) = file.metadata().and_then(|m| m.modified()) {
            if m.elapsed().unwrap_or_default() > super::gc::TOUCH_INTERVAL {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        }
        let f = std::sync::Arc::new(file);
        self.open.lock().put(*digest, f.clone());
        Ok(f)
    }

    /// Store `data` under `digest` after checking it. Storing twice is harmless.
    pub fn put(&self, digest: &[u8; 32], data: &[u8]) -> io::Result<()> {
        if Digest::of(data).hex() != hex::encode(digest) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk does not match its digest; not stored",
            ));
        }
        let dest = self.path(digest);
        if dest.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        let tmp = self.temp_path("chunk", digest);
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &dest)
    }

    /// Store the chunk `digest` from the bytes `fill` writes: streamed into a temporary file,
    /// hashed on the way, renamed into place only when `fill` succeeded and the bytes match.
    /// The outer error is the store's; the inner one, `fill`'s (nothing is kept then).
    pub fn put_from<E>(
        &self,
        digest: &[u8; 32],
        fill: impl FnOnce(&mut dyn io::Write) -> Result<(), E>,
    ) -> io::Result<Result<(), E>> {
        self.put_streamed(digest, fill, true)
    }

    /// [`ChunkStore::put_from`] for a `fill` that checks its own bytes and fails unless they
    /// hash to `digest`, as [`crate::format::chunk::copy_verified`] does: the store does not
    /// hash them a second time (hashing was a tenth of a cold daemon's CPU).
    pub fn put_from_checked<E>(
        &self,
        digest: &[u8; 32],
        fill: impl FnOnce(&mut dyn io::Write) -> Result<(), E>,
    ) -> io::Result<Result<(), E>> {
        self.put_streamed(digest, fill, false)
    }

    fn put_streamed<E>(
        &self,
        digest: &[u8; 32],
        fill: impl FnOnce(&mut dyn io::Write) -> Result<(), E>,
        hash: bool,
    ) -> io::Result<Result<(), E>> {
        let dest = self.path(digest);
        if dest.exists() {
            return Ok(Ok(()));
        }
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        let tmp = self.temp_path("chunk", digest);
        let written = (|| {
            let file = std::fs::File::create(&tmp)?;
            let mut out = HashingWriter {
                inner: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
                hasher: hash.then(crate::digest::Hasher::new),
            };
            if let Err(e) = fill(&mut out) {
                return Ok(Err(e));
            }
            io::Write::flush(&mut out.inner)?;
            if out.hasher.is_some_and(|h| h.finish().hex() != hex::encode(digest)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk does not match its digest; not stored",
                ));
            }
            std::fs::rename(&tmp, &dest)?;
            Ok(Ok(()))
        })();
        if !matches!(written, Ok(Ok(()))) {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Where the assembled copy of a multi-chunk file lives (keyed by the file's digest).
    pub fn assembled_path(&self, file_digest: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(file_digest);
        self.files.join(&hex[..2]).join(hex)
    }

    /// Read from the assembled copy of a file, if there is one.
    pub fn read_assembled(&self, file_digest: &[u8; 32], offset: u64, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // Assembled files share the open-file cache under a key that cannot be a chunk's:
        // the digest with its first byte flipped.
        let mut key = *file_digest;
        key[0] ^= 0xff;
        let cached = self.open.lock().get(&key).cloned();
        let f = match cached {
            Some(f) => f,
            None => match std::fs::File::open(self.assembled_path(file_digest)) {
                Ok(f) => {
                    let f = std::sync::Arc::new(f);
                    self.open.lock().put(key, f.clone());
                    f
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        pread_full(&f, offset, buf).map(Some)
    }

    /// Copy a file's chunks, all present (zeros need not be), into one local file (verified
    /// against the file's digest), so later reads are one `pread`. Returns whether the file is
    /// now assembled.
    pub fn assemble(&self, file_digest: &[u8; 32], chunks: &[Chunk]) -> io::Result<bool> {
        let dest = self.assembled_path(file_digest);
        if dest.exists() {
            return Ok(true);
        }
        let present = |c: &Chunk| c.kind == ChunkKind::Zeros || self.contains(&c.digest);
        if !chunks.iter().all(present) {
            return Ok(false);
        }
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        let tmp = self.temp_path("file", file_digest);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut hasher = crate::digest::Hasher::new();
        for c in chunks {
            if c.kind == ChunkKind::Zeros {
                copy_hashed(&mut io::repeat(0).take(c.len), &mut out, &mut hasher)?;
            } else {
                copy_hashed(&mut std::fs::File::open(self.path(&c.digest))?, &mut out, &mut hasher)?;
            }
        }
        std::io::Write::flush(&mut out)?;
        drop(out);
        if hasher.finish().hex() != hex::encode(file_digest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "assembled file does not match its digest",
            ));
        }
        std::fs::rename(&tmp, &dest)?;
        Ok(true)
    }

    /// Read `buf.len()` bytes of a chunk from `offset` (fewer at its end).
    pub fn read_at(&self, digest: &[u8; 32], offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(digest)?;
        pread_full(&f, offset, buf)
    }
}

/// A writer that hashes what goes through it (if it has a hasher).
struct HashingWriter<W> {
    inner: W,
    hasher: Option<crate::digest::Hasher>,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copy `from` into `to` in blocks, hashing.
fn copy_hashed(
    from: &mut impl io::Read,
    to: &mut impl io::Write,
    hasher: &mut crate::digest::Hasher,
) -> io::Result<()> {
    let mut block = vec![0u8; WRITE_BUFFER_BYTES];
    loop {
        let n = match from.read(&mut block) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&block[..n]);
        to.write_all(&block[..n])?;
    }
}

/// Read until `buf` is full or the file ends.
fn pread_full(f: &std::fs::File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matching_bytes_enter() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = b"chunk bytes";
        let mut d = [0u8; 32];
        hex::decode_to_slice(Digest::of(data).hex(), &mut d).unwrap();
        assert!(store.put(&d, b"other bytes").is_err());
        assert!(!store.contains(&d));
        store.put(&d, data).unwrap();
        store.put(&d, data).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(store.read_at(&d, 6, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"bytes");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    fn chunk(digest: [u8; 32], len: usize, kind: ChunkKind) -> Chunk {
        Chunk {
            file_offset: 0,
            len: len as u64,
            blob_offset: 0,
            blob_len: 0,
            inner_offset: 0,
            digest,
            kind,
        }
    }

    #[test]
    fn streamed_chunks_enter_only_whole_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = b"streamed chunk".to_vec();
        let mut d = [0u8; 32];
        hex::decode_to_slice(Digest::of(&data).hex(), &mut d).unwrap();
        // The filler fails half way: nothing kept.
        let failed = store
            .put_from(&d, |out| {
                out.write_all(&data[..4]).unwrap();
                Err("cut")
            })
            .unwrap();
        assert_eq!(failed, Err("cut"));
        assert!(!store.contains(&d));
        // Wrong bytes: refused by the store.
        assert!(store.put_from(&d, |out| out.write_all(b"other bytes")).is_err());
        assert!(!store.contains(&d));
        store
            .put_from(&d, |out| {
                out.write_all(&data[..4]).and_then(|_| out.write_all(&data[4..]))
            })
            .unwrap()
            .unwrap();
        assert!(store.contains(&d));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn files_are_assembled_only_whole_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let raw = |d: &[u8]| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(Digest::of(d).hex(), &mut out).unwrap();
            out
        };
        let (a, b) = (b"first part ".to_vec(), b"second part".to_vec());
        let zeros = vec![0u8; 5];
        let whole = [a.clone(), zeros.clone(), b.clone()].concat();
        let (da, db, dw) = (raw(&a), raw(&b), raw(&whole));
        let parts = [
            chunk(da, a.len(), ChunkKind::Data),
            chunk(raw(&zeros), zeros.len(), ChunkKind::Zeros),
            chunk(db, b.len(), ChunkKind::Data),
        ];
        store.put(&da, &a).unwrap();
        assert!(!store.assemble(&dw, &parts).unwrap(), "assembled with a chunk missing");
        store.put(&db, &b).unwrap();
        // The zeros chunk is not in the store: it is written as zeros.
        assert!(store.assemble(&dw, &parts).unwrap());
        let mut buf = vec![0u8; 8];
        assert_eq!(store.read_assembled(&dw, 14, &mut buf).unwrap(), Some(8));
        assert_eq!(&buf, b"\0\0second");
        // A wrong file digest is refused and leaves nothing behind.
        assert!(store.assemble(&da, &parts).is_err());
        assert_eq!(store.read_assembled(&raw(b"nothing"), 0, &mut buf).unwrap(), None);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
