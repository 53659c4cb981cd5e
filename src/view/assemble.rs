//! Assembly in the background: a multi-chunk file read to its end, all of whose chunks are
//! here, is copied into one local file ([`ChunkStore::assemble`]) so later reads are one
//! `pread` and later opens can be passed through.
//!
//! The copy (and its sha256) is work a cold start does not need, and done at once it was a
//! third of the chunk bytes written again during a bulk read. So one thread does it, at the
//! lowest priority (nice 19): it runs when a core is free, not against the reads it would
//! speed up. At most [`QUEUE`] files wait; a file asked for twice is assembled once; what is
//! still queued when the daemon exits is asked for again the next time the file is read.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cache::chunks::ChunkStore;
use crate::model::Chunk;

/// Files waiting to be assembled; more are dropped (asked for again at their next read).
const QUEUE: usize = 4096;

/// A file to assemble: its digest and its chunks.
type Request = ([u8; 32], Vec<Chunk>);

/// The background assembler of one mount.
pub struct Assembler {
    send: Mutex<Option<mpsc::SyncSender<Request>>>,
    queued: Arc<Mutex<HashSet<[u8; 32]>>>,
    store: ChunkStore,
}

impl Assembler {
    /// An assembler into `store`; its thread starts with the first file.
    pub fn new(store: ChunkStore) -> Assembler {
        Assembler {
            send: Mutex::new(None),
            queued: Arc::new(Mutex::new(HashSet::new())),
            store,
        }
    }

    /// Assemble the file with this digest from `chunks`, in the background.
    pub fn request(&self, file_digest: [u8; 32], chunks: Vec<Chunk>) {
        if !self.queued.lock().insert(file_digest) {
            return;
        }
        let mut send = self.send.lock();
        let tx = send.get_or_insert_with(|| self.start());
        if tx.try_send((file_digest, chunks)).is_err() {
            self.queued.lock().remove(&file_digest);
        }
    }

    fn start(&self) -> mpsc::SyncSender<Request> {
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE);
        let (store, queued) = (self.store.clone(), self.queued.clone());
        let started = std::thread::Builder::new().name("assemble".into()).spawn(move || {
            // On Linux a thread's nice value is its own: only this thread is lowered.
            if let Err(e) = rustix::process::setpriority_process(None, 19) {
                tracing::debug!(error = %e, "could not lower the assembling thread's priority");
            }
            for (digest, chunks) in rx {
                if let Err(e) = store.assemble(&digest, &chunks) {
                    tracing::debug!(error = %e, "could not assemble a file");
                }
                queued.lock().remove(&digest);
            }
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread to assemble files in: large files stay in chunks");
        }
        tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChunkKind;

    fn chunk_of(data: &[u8], file_offset: u64) -> Chunk {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(crate::digest::Digest::of(data).hex(), &mut digest).unwrap();
        Chunk {
            file_offset,
            len: data.len() as u64,
            blob_offset: 0,
            blob_len: 0,
            inner_offset: 0,
            digest,
            kind: ChunkKind::Data,
        }
    }

    #[test]
    fn a_requested_file_is_assembled_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (a, b) = (vec![1u8; 3000], vec![2u8; 5000]);
        let chunks = vec![chunk_of(&a, 0), chunk_of(&b, 3000)];
        store.put(&chunks[0].digest, &a).unwrap();
        store.put(&chunks[1].digest, &b).unwrap();
        let whole = [a.clone(), b.clone()].concat();
        let mut file_digest = [0u8; 32];
        hex::decode_to_slice(crate::digest::Digest::of(&whole).hex(), &mut file_digest).unwrap();
        let assembler = Assembler::new(store.clone());
        assembler.request(file_digest, chunks.clone());
        assembler.request(file_digest, chunks);
        let path = store.assembled_path(&file_digest);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !(path.exists() && assembler.queued.lock().is_empty()) {
            assert!(std::time::Instant::now() < deadline, "not assembled in 20 s");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read(&path).unwrap(), whole);
    }
}
