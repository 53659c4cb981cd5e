//! Recording what a mount's workload reads, for its access profile: each file's first access
//! (time from the mount) and the chunk ranges read through the daemon. A file opened with
//! passthrough (all its bytes local) is recorded whole: its reads never reach the daemon.
//!
//! Cost: one short lock and a hash lookup per open and per read that the daemon serves.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use crate::profile::{normalize_ranges, FileAccess, Profile};
use crate::union::live::LiveUnion;

/// Ranges kept per file before it is recorded as read whole.
const MAX_RANGES_PER_FILE: usize = 1024;

struct Access {
    layer: usize,
    entry: usize,
    t_ms: u64,
    /// Chunk index ranges read; `None`: the whole file.
    chunks: Option<Vec<(u32, u32)>>,
}

#[derive(Default)]
struct Accesses {
    at: HashMap<(usize, usize), usize>,
    files: Vec<Access>,
    changed: bool,
}

/// First accesses of one mount.
pub struct Recorder {
    started: Instant,
    state: Mutex<Accesses>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            started: Instant::now(),
            state: Mutex::default(),
        }
    }
}

impl Recorder {
    fn entry(&self, st: &mut Accesses, layer: usize, entry: usize) -> usize {
        let t_ms = self.started.elapsed().as_millis() as u64;
        let files = &mut st.files;
        *st.at.entry((layer, entry)).or_insert_with(|| {
            files.push(Access {
                layer,
                entry,
                t_ms,
                chunks: Some(Vec::new()),
            });
            files.len() - 1
        })
    }

    /// File (`layer`, `entry`) was opened; `whole`: with passthrough (all its bytes were
    /// local, its reads will not reach lamina), so it counts as read whole — unless an earlier
    /// open already recorded which chunks were read (those are what the workload needed).
    pub fn opened(&self, layer: usize, entry: usize, whole: bool) {
        let mut st = self.state.lock();
        let known = st.at.contains_key(&(layer, entry));
        let i = self.entry(&mut st, layer, entry);
        if whole && !known {
            st.files[i].chunks = None;
            st.changed = true;
        }
    }

    /// Chunks `first..=last` of file (`layer`, `entry`) were read through the daemon.
    pub fn read(&self, layer: usize, entry: usize, first: u32, last: u32) {
        let mut st = self.state.lock();
        let i = self.entry(&mut st, layer, entry);
        st.changed = true;
        let Some(ranges) = st.files[i].chunks.as_mut() else {
            return;
        };
        match ranges.last_mut() {
            Some(r) if first <= r.1.saturating_add(1) && last >= r.0 => *r = (r.0.min(first), r.1.max(last)),
            _ => ranges.push((first, last)),
        }
        if ranges.len() > MAX_RANGES_PER_FILE {
            let merged = normalize_ranges(std::mem::take(ranges));
            if merged.len() > MAX_RANGES_PER_FILE {
                st.files[i].chunks = None;
            } else {
                *ranges = merged;
            }
        }
    }

    /// Whether anything was recorded since the last [`Recorder::take_changed`].
    pub fn take_changed(&self) -> bool {
        std::mem::take(&mut self.state.lock().changed)
    }

    /// This mount's run as a profile of `image` (files never read are left out).
    pub fn profile(&self, image: &crate::digest::Digest, live: &LiveUnion, layer_digests: &[String]) -> Profile {
        let st = self.state.lock();
        let mut p = Profile::new(image);
        p.runs = 1;
        live.read(|u| {
            for a in &st.files {
                let chunks = match &a.chunks {
                    Some(r) if r.is_empty() => continue,
                    Some(r) => Some(normalize_ranges(r.clone())),
                    None => None,
                };
                let (Some(index), Some(layer)) = (u.layers.get(a.layer), layer_digests.get(a.layer)) else {
                    continue;
                };
                let Some(e) = index.entries.get(a.entry) else { continue };
                let Ok(path) = std::str::from_utf8(e.path.as_bytes()) else {
                    continue;
                };
                p.files.push(FileAccess {
                    layer: layer.clone(),
                    path: path.to_string(),
                    t_ms: a.t_ms,
                    chunks,
                });
            }
        });
        p
    }
}
