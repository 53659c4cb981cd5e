//! A blob being downloaded to a local file while another thread already reads it.
//!
//! ```text
//! downloader ── write_at ──► file ◄── read_at ── SpoolReader (blocks while caught up)
//!      └─ advance(n) / finish(result) ──► state + condvar ──► wakes the reader
//! ```
//!
//! Invariants: a reader never sees bytes past what the downloader has written; once the
//! download ends the reader sees EOF on success and the download's error otherwise; a download
//! that is dropped without finishing (cancelled, panicked) ends as an error, so no reader
//! waits forever.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct State {
    written: u64,
    done: Option<Result<(), String>>,
}

/// The shared side of one spooled blob.
pub struct Spool {
    path: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

impl Spool {
    /// Create the (empty) spool file at `path`.
    pub fn create(path: &Path) -> io::Result<Arc<Spool>> {
        File::create_new(path)?;
        Ok(Arc::new(Spool {
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }))
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The downloader has written the first `written` bytes.
    pub fn advance(&self, written: u64) {
        self.state.lock().written = written;
        self.changed.notify_all();
    }

    /// The download ended. Only the first call counts.
    pub fn finish(&self, result: Result<(), String>) {
        let mut s = self.state.lock();
        if s.done.is_none() {
            s.done = Some(result);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// A reader from byte 0.
    pub fn reader(self: &Arc<Self>) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            spool: self.clone(),
            file: File::open(&self.path)?,
            pos: 0,
        })
    }

    /// A guard that finishes the spool with an error if dropped before [`FinishGuard::done`].
    pub fn guard(self: &Arc<Self>) -> FinishGuard {
        FinishGuard(Some(self.clone()))
    }
}

/// Ends a spool as failed when a download goes away without saying how it ended.
pub struct FinishGuard(Option<Arc<Spool>>);

impl FinishGuard {
    /// Finish with `result`.
    pub fn done(mut self, result: Result<(), String>) {
        if let Some(s) = self.0.take() {
            s.finish(result);
        }
    }

    /// Hand the duty on: dropping this guard no longer finishes the spool.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.finish(Err("download cancelled".to_string()));
        }
    }
}

/// Reads a spool from the start, waiting for bytes not yet downloaded.
pub struct SpoolReader {
    spool: Arc<Spool>,
    file: File,
    pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = {
            let mut s = self.spool.state.lock();
            loop {
                if s.written > self.pos {
                    break s.written - self.pos;
                }
                match &s.done {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e.clone())),
                    None => self.spool.changed.wait(&mut s),
                }
            }
        };
        let want = buf.len().min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file shorter than recorded",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_follows_writer_and_sees_errors() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(&dir.path().join("a")).unwrap();
        let mut reader = spool.reader().unwrap();
        let writer = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().write(true).open(spool.path()).unwrap();
                for i in 0..100u64 {
                    f.write_all_at(&[i as u8; 1000], i * 1000).unwrap();
                    spool.advance((i + 1) * 1000);
                }
                spool.finish(Ok(()));
            })
        };
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert_eq!(all.len(), 100_000);
        assert!(all
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));

        let failing = Spool::create(&dir.path().join("b")).unwrap();
        let mut r = failing.reader().unwrap();
        drop(failing.guard()); // a download that vanished
        let err = r.read(&mut [0; 10]).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }
}
