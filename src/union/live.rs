//! A union that may still be growing: plain (TOC-less) layers are merged while they stream.
//!
//! ```text
//! layers:  0 ─ 1 ─ 2 (streaming: the frontier) ─ 3 (complete, waiting) ─ 4 (streaming)
//!          └ merged whole ┘   └ merged up to the entries that have arrived ┘
//! ```
//!
//! Layers are merged bottom to top, each in stream order; the lowest layer not yet whole is the
//! *frontier* and takes entries as they arrive; layers above it wait for it to finish.
//!
//! A lookup is answered as soon as its answer can no longer change:
//! - the name was made by the frontier layer, and every layer above is complete and touches
//!   neither the name nor a directory above it in a way that hides it ([`Reach`]);
//! - otherwise (the name comes from below the frontier, or is not there yet) it waits until the
//!   layers that could still change it are merged. So a file is served as soon as the stream
//!   has passed it; a name that does not exist is known not to only when the stream is over.
//!
//! Listings wait for the whole union. A waiter gives up with [`LiveError::Stalled`] when
//! nothing has arrived for the patience time, and at once when a layer failed for good.
//!
//! Assumption, from tar semantics: a path appears once per layer. A layer that names a path
//! twice is merged as it arrives (the later entry wins, as in `lamina pull`), but an answer
//! given for the first one is not taken back; attributes are served with a short lifetime
//! while the union grows so the kernel asks again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::{Union, UnionError};
use crate::changeset::{classify, LayerPath, LayerRules, Marker};
use crate::index::{IndexEntry, LayerIndex};
use crate::model::Chunk;
use crate::model::EntryKind;

/// Where a layer stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerStatus {
    /// Every entry is known.
    Complete,
    /// Entries are still arriving.
    Streaming,
    /// The stream failed; `permanent` when trying again cannot help (the bytes are wrong).
    Failed {
        /// Why.
        reason: String,
        /// Whether a retry is pointless.
        permanent: bool,
    },
    /// The layer cannot be had (the registry refuses it for good: 404, 401, 403): it is merged
    /// with what arrived of it (usually nothing), so the other layers' names resolve.
    Unavailable(String),
}

/// A lookup or listing could not be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LiveError {
    /// Nothing arrived for the patience time.
    #[error("layer {0} is still streaming and made no progress in time")]
    Stalled(usize),
    /// A layer failed for good.
    #[error("layer {layer} failed: {reason}")]
    Failed {
        /// The layer.
        layer: usize,
        /// Why.
        reason: String,
    },
}

/// What a complete layer above the frontier could change: the paths it names and the paths
/// under which it hides or replaces everything.
#[derive(Debug, Default)]
struct Reach {
    /// Paths named by an entry or a whiteout.
    named: HashSet<LayerPath>,
    /// Whiteout targets, opaque directories and non-directories: everything under them is
    /// hidden or replaced.
    covers: HashSet<LayerPath>,
    /// Directories above the entries: anything else found there is replaced by a directory.
    parents: HashSet<LayerPath>,
}

impl Reach {
    fn of(layer: &LayerIndex) -> Reach {
        let mut r = Reach::default();
        for e in &layer.entries {
            match classify(&e.path) {
                Ok(Marker::Whiteout { target }) => {
                    r.named.insert(target.clone());
                    r.covers.insert(target);
                }
                Ok(Marker::Opaque { dir }) => {
                    r.covers.insert(dir);
                }
                Ok(Marker::Plain) => {
                    if e.kind != EntryKind::Directory {
                        r.covers.insert(e.path.clone());
                    }
                    r.named.insert(e.path.clone());
                    let mut p = e.path.clone();
                    while let Some((parent, _)) = p.split_last() {
                        if !r.parents.insert(parent.clone()) {
                            break;
                        }
                        p = parent;
                    }
                }
                Ok(Marker::AufsMeta) | Err(_) => {}
            }
        }
        r
    }

    /// Whether the layer could change what `path` (a directory or not) is.
    fn touches(&self, path: &LayerPath, is_dir: bool) -> bool {
        if self.named.contains(path) || (!is_dir && self.parents.contains(path)) {
            return true;
        }
        let mut p = path.clone();
        while let Some((parent, _)) = p.split_last() {
            if self.covers.contains(&parent) {
                return true;
            }
            p = parent;
        }
        false
    }
}

/// The state behind the lock.
pub struct LiveState {
    /// The union merged so far.
    pub union: Union,
    /// Layer indexes, bottom first (a streaming layer's grows).
    pub layers: Vec<LayerIndex>,
    status: Vec<LayerStatus>,
    /// Layers `..merged` are merged whole.
    merged: usize,
    /// Entries of the frontier layer merged so far.
    frontier_entries: usize,
    frontier_rules: LayerRules,
    reach: Vec<Option<Reach>>,
}

impl LiveState {
    /// Merge whatever can be merged now: the rest of the frontier's arrived entries, and the
    /// layers above it for as long as each is complete.
    fn advance(&mut self) -> Result<(), UnionError> {
        while self.merged < self.layers.len() {
            let li = self.merged;
            let arrived = self.layers[li].entries.len();
            for ei in self.frontier_entries..arrived {
                let e = &self.layers[li].entries[ei];
                self.union.apply_entry(&mut self.frontier_rules, li, ei, e)?;
            }
            self.frontier_entries = arrived;
            if !matches!(self.status[li], LayerStatus::Complete | LayerStatus::Unavailable(_)) {
                return Ok(());
            }
            self.union.finish_layer();
            self.merged += 1;
            self.frontier_entries = 0;
            self.frontier_rules = LayerRules::default();
            self.reach[li] = None;
        }
        Ok(())
    }

    /// Work out the reach of the complete layers above the frontier that lack one, so that
    /// lookups only read.
    fn note_reach(&mut self) {
        for li in self.merged + 1..self.layers.len() {
            if self.is_whole(li) && self.reach[li].is_none() {
                self.reach[li] = Some(Reach::of(&self.layers[li]));
            }
        }
    }

    /// Whether every entry layer `li` will ever have has arrived.
    fn is_whole(&self, li: usize) -> bool {
        matches!(self.status[li], LayerStatus::Complete | LayerStatus::Unavailable(_))
    }

    /// The first layer not merged yet that failed for good, as an error.
    fn failed_for_good(&self) -> Option<LiveError> {
        self.status
            .iter()
            .enumerate()
            .skip(self.merged)
            .find_map(|(layer, s)| match s {
                LayerStatus::Failed {
                    reason,
                    permanent: true,
                } => Some(LiveError::Failed {
                    layer,
                    reason: reason.clone(),
                }),
                _ => None,
            })
    }

    /// Whether the answer for `name` in `parent` is final now.
    fn settled(&self, parent: u64, name: &[u8]) -> Result<bool, LiveError> {
        let f = self.merged;
        if f == self.layers.len() {
            return Ok(true);
        }
        if let Some(e) = self.failed_for_good() {
            return Err(e);
        }
        let Some(child) = self.union.child(parent, name) else {
            return Ok(false);
        };
        let is_dir = self.union.node(child).kind == EntryKind::Directory;
        let Some(path) = self.union.path_of(parent).map(|p| p.join(name)) else {
            return Ok(false);
        };
        if !self.frontier_rules.made(&path) {
            return Ok(false);
        }
        for li in f + 1..self.layers.len() {
            match &self.reach[li] {
                Some(reach) if self.is_whole(li) => {
                    if reach.touches(&path, is_dir) {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// A union shared by the FUSE workers and the streams feeding it.
pub struct LiveUnion {
    state: RwLock<LiveState>,
    complete: AtomicBool,
    progress: Mutex<u64>,
    changed: Condvar,
    patience: Duration,
}

impl LiveUnion {
    /// A union of `layers` (bottom first); `streaming[i]` says layer `i` is still arriving
    /// (its entries so far are in `layers[i]`). A waiter gives up after `patience` without
    /// progress.
    pub fn new(layers: Vec<LayerIndex>, streaming: &[bool], patience: Duration) -> Result<LiveUnion, UnionError> {
        let n = layers.len();
        let mut state = LiveState {
            union: Union::new(),
            layers,
            status: (0..n)
                .map(|i| {
                    if streaming.get(i).copied().unwrap_or(false) {
                        LayerStatus::Streaming
                    } else {
                        LayerStatus::Complete
                    }
                })
                .collect(),
            merged: 0,
            frontier_entries: 0,
            frontier_rules: LayerRules::default(),
            reach: (0..n).map(|_| None).collect(),
        };
        state.advance()?;
        state.note_reach();
        let complete = state.merged == n;
        Ok(LiveUnion {
            state: RwLock::new(state),
            complete: AtomicBool::new(complete),
            progress: Mutex::new(0),
            changed: Condvar::new(),
            patience,
        })
    }

    /// Whether every layer is merged whole.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Run `f` on the union as it is now.
    pub fn read<R>(&self, f: impl FnOnce(&LiveState) -> R) -> R {
        f(&self.state.read())
    }

    /// Each layer's status, bottom first.
    pub fn statuses(&self) -> Vec<LayerStatus> {
        self.state.read().status.clone()
    }

    /// Entries of layer `li` known so far.
    pub fn entries_of(&self, li: usize) -> usize {
        self.state.read().layers[li].entries.len()
    }

    /// A copy of layer `li`'s index.
    pub fn layer_index(&self, li: usize) -> LayerIndex {
        self.state.read().layers[li].clone()
    }

    /// Look `name` up in directory `parent` once the answer is final; `f` sees the union and
    /// the child's inode (None: no such name).
    pub fn lookup<R>(
        &self,
        parent: u64,
        name: &[u8],
        f: impl FnOnce(&Union, Option<u64>) -> R,
    ) -> Result<R, LiveError> {
        if self.is_complete() {
            let st = self.state.read();
            return Ok(f(&st.union, st.union.child(parent, name)));
        }
        let mut f = Some(f);
        self.wait_until(|st| {
            if st.settled(parent, name)? {
                let f = f.take().expect("called once");
                Ok(Some(f(&st.union, st.union.child(parent, name))))
            } else {
                Ok(None)
            }
        })
    }

    /// [`Self::lookup`] without waiting: `None` while the answer can still change.
    pub fn lookup_now(&self, parent: u64, name: &[u8]) -> Result<Option<Option<u64>>, LiveError> {
        let st = self.state.read();
        if self.is_complete() || st.settled(parent, name)? {
            return Ok(Some(st.union.child(parent, name)));
        }
        Ok(None)
    }

    /// Wait until every layer is merged whole.
    pub fn wait_complete(&self) -> Result<(), LiveError> {
        if self.is_complete() {
            return Ok(());
        }
        self.wait_until(|st| {
            if st.merged == st.layers.len() {
                return Ok(Some(()));
            }
            st.failed_for_good().map_or(Ok(None), Err)
        })
    }

    /// Evaluate `check` (under the read lock) until it
    /// gives an answer, waiting for progress in between.
    fn wait_until<R>(&self, mut check: impl FnMut(&LiveState) -> Result<Option<R>, LiveError>) -> Result<R, LiveError> {
        let mut last_progress = Instant::now();
        loop {
            let seen = *self.progress.lock();
            let frontier = {
                let st = self.state.read();
                if let Some(r) = check(&st)? {
                    return Ok(r);
                }
                st.merged
            };
            let mut p = self.progress.lock();
            if *p == seen {
                let left = self.patience.saturating_sub(last_progress.elapsed());
                if left.is_zero() {
                    return Err(LiveError::Stalled(frontier));
                }
                self.changed.wait_for(&mut p, left);
            }
            if *p != seen {
                last_progress = Instant::now();
            }
        }
    }

    fn changed(&self) {
        *self.progress.lock() += 1;
        self.changed.notify_all();
    }

    /// An entry of streaming layer `li` arrived, with its chunks (already in the store).
    pub fn push(&self, li: usize, entry: IndexEntry, chunks: Vec<Chunk>) -> Result<(), UnionError> {
        let result = {
            let mut st = self.state.write();
            if st.layers[li].entries.len() >= super::MAX_STREAMED_LAYER_ENTRIES {
                return Err(UnionError {
                    layer: li,
                    entry: entry.path.to_string(),
                    reason: format!(
                        "more than {} entries in the layer; refused",
                        super::MAX_STREAMED_LAYER_ENTRIES
                    ),
                });
            }
            st.layers[li].push_entry(entry, chunks);
            if st.merged == li {
                st.advance()
            } else {
                Ok(())
            }
        };
        self.changed();
        result
    }

    /// Streaming layer `li` ended: complete, or failed (`permanent` when retrying cannot help).
    pub fn finish(&self, li: usize, outcome: Result<(), (String, bool)>) -> Result<(), UnionError> {
        self.settle(
            li,
            match outcome {
                Ok(()) => LayerStatus::Complete,
                Err((reason, permanent)) => LayerStatus::Failed { reason, permanent },
            },
        )
    }

    /// Streaming layer `li` cannot be had: the union goes on without the rest of it.
    pub fn give_up(&self, li: usize, reason: String) -> Result<(), UnionError> {
        self.settle(li, LayerStatus::Unavailable(reason))
    }

    fn settle(&self, li: usize, status: LayerStatus) -> Result<(), UnionError> {
        let result = {
            let mut st = self.state.write();
            st.status[li] = status;
            let r = st.advance();
            st.note_reach();
            if st.merged == st.layers.len() {
                self.complete.store(true, Ordering::Release);
            }
            r
        };
        self.changed();
        result
    }

    /// Streaming layer `li` is being tried again.
    pub fn restart(&self, li: usize) {
        self.state.write().status[li] = LayerStatus::Streaming;
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::union::testing::{e, layer};
    use crate::union::ROOT_INO;

    fn found(u: &LiveUnion, path: &str) -> Result<bool, LiveError> {
        let mut ino = ROOT_INO;
        for c in path.split('/') {
            match u.lookup(ino, c.as_bytes(), |_, child| child)? {
                Some(child) => ino = child,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    #[test]
    fn names_made_by_the_frontier_are_served_before_it_ends() {
        use EntryKind::*;
        let base = layer(vec![e("etc", Directory), e("etc/old", Regular)]);
        let top = layer(vec![e("etc/.wh.gone", Regular)]);
        let u = LiveUnion::new(
            vec![base, LayerIndex::default(), top],
            &[false, true, false],
            Duration::from_millis(200),
        )
        .unwrap();
        u.push(1, e("bin", Directory), vec![]).unwrap();
        u.push(1, e("bin/sh", Regular), vec![]).unwrap();
        // Made by the streaming layer, untouched above: final now.
        assert_eq!(found(&u, "bin/sh"), Ok(true));
        // From below the frontier: it might still be whited out, so the lookup waits, and
        // gives up when nothing arrives.
        assert_eq!(found(&u, "etc/old"), Err(LiveError::Stalled(1)));
        // Not there yet: it may still come.
        assert_eq!(found(&u, "bin/ls"), Err(LiveError::Stalled(1)));
        // The answer arrives while a lookup waits.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| found(&u, "bin/ls"));
            std::thread::sleep(Duration::from_millis(50));
            u.push(1, e("bin/ls", Regular), vec![]).unwrap();
            assert_eq!(waiter.join().unwrap(), Ok(true));
        });
        u.push(1, e("etc/.wh.old", Regular), vec![]).unwrap();
        u.finish(1, Ok(())).unwrap();
        assert!(u.is_complete());
        assert_eq!(found(&u, "etc/old"), Ok(false));
        assert_eq!(found(&u, "bin/missing"), Ok(false));
        u.wait_complete().unwrap();
    }

    #[test]
    fn a_layer_above_that_touches_the_name_holds_it_back() {
        use EntryKind::*;
        let top = layer(vec![e("app/.wh..wh..opq", Regular), e("app/new", Regular)]);
        let u = LiveUnion::new(
            vec![LayerIndex::default(), top],
            &[true, false],
            Duration::from_millis(100),
        )
        .unwrap();
        u.push(0, e("app", Directory), vec![]).unwrap();
        u.push(0, e("app/old", Regular), vec![]).unwrap();
        u.push(0, e("usr/bin", Directory), vec![]).unwrap();
        assert_eq!(found(&u, "usr/bin"), Ok(true));
        // app is named by the top layer (its opaque marker hides app/*): wait.
        assert_eq!(found(&u, "app/old"), Err(LiveError::Stalled(0)));
        u.finish(0, Ok(())).unwrap();
        assert_eq!(found(&u, "app/old"), Ok(false));
        assert_eq!(found(&u, "app/new"), Ok(true));
    }

    #[test]
    fn a_non_directory_that_a_layer_above_builds_under_waits() {
        use EntryKind::*;
        let top = layer(vec![e("evil/planted", Regular)]);
        let u = LiveUnion::new(
            vec![LayerIndex::default(), top],
            &[true, false],
            Duration::from_millis(100),
        )
        .unwrap();
        u.push(0, e("evil", Symlink), vec![]).unwrap();
        assert_eq!(found(&u, "evil"), Err(LiveError::Stalled(0)));
        u.finish(0, Ok(())).unwrap();
        let kind = u.lookup(ROOT_INO, b"evil", |un, c| un.node(c.unwrap()).kind).unwrap();
        assert_eq!(kind, Directory);
    }

    #[test]
    fn a_failed_layer_fails_waiters_at_once() {
        let u = LiveUnion::new(vec![LayerIndex::default()], &[true], Duration::from_secs(60)).unwrap();
        u.finish(0, Err(("digest mismatch".into(), true))).unwrap();
        assert!(matches!(found(&u, "x"), Err(LiveError::Failed { layer: 0, .. })));
        assert!(u.wait_complete().is_err());
    }

    #[test]
    fn an_unavailable_layer_lets_the_other_layers_names_resolve() {
        use EntryKind::*;
        let l0 = layer(vec![e("a", Regular)]);
        let l2 = layer(vec![e("c", Regular)]);
        let u = LiveUnion::new(
            vec![l0, LayerIndex::default(), l2],
            &[false, true, false],
            Duration::from_secs(60),
        )
        .unwrap();
        u.give_up(1, "HTTP 404".into()).unwrap();
        assert_eq!(found(&u, "a"), Ok(true));
        assert_eq!(found(&u, "c"), Ok(true));
        assert_eq!(found(&u, "b"), Ok(false));
        assert!(u.wait_complete().is_ok());
    }

    #[test]
    fn stream_order_merge_equals_the_whole_layer_merge() {
        use EntryKind::*;
        let l0 = layer(vec![e("d", Directory), e("d/a", Regular), e("d/b", Regular)]);
        let l1 = layer(vec![e("d/.wh.a", Regular), e("d/c", Regular), e("d/b", Directory)]);
        let whole = Union::build(&[l0.clone(), l1.clone()]).unwrap();
        let u = LiveUnion::new(vec![l0, LayerIndex::default()], &[false, true], Duration::from_secs(1)).unwrap();
        for x in l1.entries {
            u.push(1, x, vec![]).unwrap();
        }
        u.finish(1, Ok(())).unwrap();
        let names = |un: &Union| {
            let d = un.lookup_path(&LayerPath::normalize(b"d").unwrap()).unwrap();
            un.node(d)
                .children
                .iter()
                .map(|(k, v)| (k.clone(), un.node(*v).kind))
                .collect::<Vec<_>>()
        };
        let live = u.read(|st| names(&st.union));
        assert_eq!(live, names(&whole));
    }
}
