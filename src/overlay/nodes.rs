//! The writable mount's inodes: each object of the merged view, where it lives (the lower
//! union, the upper directory, or both) and the names it is reached by.
//!
//! An object that comes from the image keeps the union's inode number (so a lower hard-link
//! group is one inode, before and after copy-up); an object made in the upper gets a number
//! of its own, above [`UPPER_BASE`]. Upper objects are also found by their inode number in the
//! upper directory, which is how a copied-up hard-link group stays one inode.
//!
//! A node lives while the kernel holds it (its lookup count, FUSE `forget`), while a handle
//! of it is open or a copy-up of it runs, and while another node names it as a parent (paths
//! are built from first names). Nodes registered for the daemon's own use (listings, hard-link
//! groups) with none of these are dropped at the end of the operation ([`Nodes::sweep`]).
//! Numbers stay stable when a node goes: a lower object's number is the union's, an upper
//! object's is kept in `by_upper` (16 bytes) while the upper object exists.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::model::EntryKind;
use crate::union::ROOT_INO;

/// First inode number of objects made in the upper directory.
pub const UPPER_BASE: u64 = 1 << 48;

/// One object of the merged view.
#[derive(Debug)]
pub struct ONode {
    /// Its kind.
    pub kind: EntryKind,
    /// (parent inode, name) of every name it has; the first is the one its path is built from.
    /// Changed only through [`Nodes`], which counts each parent's named children.
    names: Vec<(u64, Vec<u8>)>,
    /// The union node it shows (a directory: the one whose children merge in).
    pub lower: Option<u64>,
    /// Whether it exists in the upper directory (then its data and metadata come from there).
    pub upper: bool,
    /// An upper file holding only metadata (overlayfs metacopy): its bytes are still the
    /// lower file's, until the first write copies them up.
    pub metacopy: bool,
    /// Its inode number in the upper directory.
    pub upper_ino: Option<u64>,
    /// The upper file, open while any handle of it is.
    pub fd: Option<Arc<OwnedFd>>,
    /// Open handles.
    pub opens: usize,
    /// A copy-up of it is running outside the lock (others that would change it wait).
    pub copying: bool,
    /// How many times the kernel has been given it (lookup, create, link), minus forgets.
    lookups: u64,
}

impl ONode {
    /// A node for a name first seen.
    pub fn new(kind: EntryKind, parent: u64, name: &[u8], lower: Option<u64>, upper: bool) -> ONode {
        ONode {
            kind,
            names: vec![(parent, name.to_vec())],
            lower,
            upper,
            metacopy: false,
            upper_ino: None,
            fd: None,
            opens: 0,
            copying: false,
            lookups: 0,
        }
    }

    /// The parent and name its path is built from.
    pub fn first_name(&self) -> Option<&(u64, Vec<u8>)> {
        self.names.first()
    }
}

/// Every object the kernel has been told about, and the ones an operation is using.
#[derive(Debug)]
pub struct Nodes {
    map: HashMap<u64, ONode>,
    /// Upper inode number → node number and kind, while the upper object exists (kept when
    /// the node goes, so it comes back under the same number).
    by_upper: HashMap<u64, (u64, EntryKind)>,
    /// Named children per parent node (a parent stays while it has any).
    children: HashMap<u64, usize>,
    /// Nodes that may have become unused, for [`Nodes::sweep`].
    candidates: Vec<u64>,
    next: u64,
}

/// Deeper than this is a loop in the parent chain (a bug), not a path.
const MAX_DEPTH: usize = 4096;

impl Nodes {
    /// The table with the root, which is in both layers.
    pub fn new(root_upper_ino: u64) -> Nodes {
        let mut root = ONode::new(EntryKind::Directory, ROOT_INO, b"", Some(ROOT_INO), true);
        root.names.clear();
        root.upper_ino = Some(root_upper_ino);
        let mut map = HashMap::new();
        map.insert(ROOT_INO, root);
        let mut by_upper = HashMap::new();
        by_upper.insert(root_upper_ino, (ROOT_INO, EntryKind::Directory));
        Nodes {
            map,
            by_upper,
            children: HashMap::new(),
            candidates: Vec::new(),
            next: UPPER_BASE,
        }
    }

    /// The node `ino`.
    pub fn get(&self, ino: u64) -> Option<&ONode> {
        self.map.get(&ino)
    }

    /// The node `ino`, to change.
    pub fn get_mut(&mut self, ino: u64) -> Option<&mut ONode> {
        self.map.get_mut(&ino)
    }

    /// How many nodes are held (for tests and logs).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Put a new node in (it may go at the next sweep unless the kernel is given it).
    pub fn insert(&mut self, ino: u64, node: ONode) {
        if let Some(old) = self.map.remove(&ino) {
            self.uncount(&old);
        }
        if let Some(u) = node.upper_ino {
            self.by_upper.insert(u, (ino, node.kind));
        }
        for (p, _) in &node.names {
            *self.children.entry(*p).or_default() += 1;
        }
        self.map.insert(ino, node);
        self.candidates.push(ino);
    }

    fn uncount(&mut self, node: &ONode) {
        for (p, _) in &node.names {
            self.uncount_child(*p);
        }
    }

    fn uncount_child(&mut self, parent: u64) {
        if let Some(c) = self.children.get_mut(&parent) {
            *c -= 1;
            if *c == 0 {
                self.children.remove(&parent);
                self.candidates.push(parent);
            }
        }
    }

    /// Record one more name of `ino` (if new).
    pub fn add_name(&mut self, ino: u64, parent: u64, name: &[u8]) {
        let Some(n) = self.map.get_mut(&ino) else { return };
        if !n.names.iter().any(|(p, x)| *p == parent && x == name) {
            n.names.push((parent, name.to_vec()));
            *self.children.entry(parent).or_default() += 1;
        }
    }

    /// Forget a name of `ino` (unlinked, or renamed away).
    pub fn remove_name(&mut self, ino: u64, parent: u64, name: &[u8]) {
        let Some(n) = self.map.get_mut(&ino) else { return };
        let before = n.names.len();
        n.names.retain(|(p, x)| !(*p == parent && x == name));
        if n.names.len() < before {
            self.uncount_child(parent);
            self.candidates.push(ino);
        }
    }

    /// Make (`parent`, `name`) the first name of `ino` (it was renamed there).
    pub fn set_first_name(&mut self, ino: u64, parent: u64, name: &[u8]) {
        self.remove_name(ino, parent, name);
        let Some(n) = self.map.get_mut(&ino) else { return };
        n.names.insert(0, (parent, name.to_vec()));
        *self.children.entry(parent).or_default() += 1;
    }

    /// The kernel was given `ino` once more.
    pub fn looked_up(&mut self, ino: u64) {
        if let Some(n) = self.map.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel forgot `count` of its lookups of `ino`.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if let Some(n) = self.map.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
            self.candidates.push(ino);
        }
    }

    /// `ino` may be unused now (its last handle closed).
    pub fn check(&mut self, ino: u64) {
        self.candidates.push(ino);
    }

    /// Drop the nodes that are unused (see the module doc), parents after their children;
    /// returns the numbers dropped.
    pub fn sweep(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        while let Some(ino) = self.candidates.pop() {
            let unused = ino != ROOT_INO
                && !self.children.contains_key(&ino)
                && self
                    .map
                    .get(&ino)
                    .is_some_and(|n| n.lookups == 0 && n.opens == 0 && n.fd.is_none() && !n.copying);
            if unused {
                let n = self.map.remove(&ino).expect("checked");
                self.uncount(&n);
                gone.push(ino);
            }
        }
        gone
    }

    /// A number for a new upper object.
    pub fn allocate(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The node number of the upper object with inode `upper_ino`, if it has one and is of
    /// kind `kind` (an upper inode number is reused once its object is gone).
    pub fn by_upper(&self, upper_ino: u64, kind: EntryKind) -> Option<u64> {
        self.by_upper
            .get(&upper_ino)
            .filter(|(_, k)| *k == kind)
            .map(|(ino, _)| *ino)
    }

    /// Note that `ino` now lives in the upper as `upper_ino`.
    pub fn set_upper(&mut self, ino: u64, upper_ino: u64) {
        if let Some(n) = self.map.get_mut(&ino) {
            n.upper = true;
            if let Some(old) = n.upper_ino.replace(upper_ino) {
                if old != upper_ino {
                    self.by_upper.remove(&old);
                }
            }
            self.by_upper.insert(upper_ino, (ino, n.kind));
        }
    }

    /// Forget the upper inode number `upper_ino` (its last name is gone).
    pub fn drop_upper(&mut self, upper_ino: u64) {
        self.by_upper.remove(&upper_ino);
    }

    /// The names from the root to `ino` (empty for the root); None if it has no name left.
    pub fn path(&self, mut ino: u64) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while ino != ROOT_INO {
            let n = self.map.get(&ino)?;
            let (parent, name) = n.names.first()?;
            out.push(name.clone());
            ino = *parent;
            if out.len() > MAX_DEPTH {
                return None;
            }
        }
        out.reverse();
        Some(out)
    }

    /// Whether `ancestor` is `ino` or one of its parents (a directory cannot move into itself).
    pub fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        for _ in 0..MAX_DEPTH {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match self.map.get(&ino).and_then(|n| n.names.first()) {
                Some((p, _)) => ino = *p,
                None => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_first_names_and_renames() {
        let mut n = Nodes::new(2);
        n.insert(5, ONode::new(EntryKind::Directory, ROOT_INO, b"a", Some(5), false));
        n.insert(6, ONode::new(EntryKind::Regular, 5, b"f", Some(6), false));
        assert_eq!(n.path(6).unwrap(), vec![b"a".to_vec(), b"f".to_vec()]);
        let x = n.allocate();
        n.insert(x, ONode::new(EntryKind::Directory, ROOT_INO, b"b", None, true));
        n.remove_name(6, 5, b"f");
        n.set_first_name(6, x, b"g");
        assert_eq!(n.path(6).unwrap(), vec![b"b".to_vec(), b"g".to_vec()]);
        assert!(n.is_within(6, x) && !n.is_within(6, 5) && n.is_within(x, ROOT_INO));
        n.remove_name(6, x, b"g");
        assert!(n.path(6).is_none());
        n.set_upper(6, 77);
        assert_eq!(n.by_upper(77, EntryKind::Regular), Some(6));
        assert_eq!(n.by_upper(77, EntryKind::Directory), None);
        n.drop_upper(77);
        assert_eq!(n.by_upper(77, EntryKind::Regular), None);
    }

    #[test]
    fn forgotten_nodes_go_children_first() {
        let mut n = Nodes::new(2);
        n.insert(5, ONode::new(EntryKind::Directory, ROOT_INO, b"d", Some(5), false));
        n.insert(6, ONode::new(EntryKind::Regular, 5, b"f", Some(6), false));
        n.looked_up(5);
        n.looked_up(6);
        n.looked_up(6);
        assert!(n.sweep().is_empty());
        // The directory goes first in the kernel's order too, but stays while it names a child.
        n.forget(5, 1);
        assert!(n.sweep().is_empty());
        n.forget(6, 1);
        assert!(n.sweep().is_empty(), "one lookup left");
        n.get_mut(6).unwrap().opens = 1;
        n.forget(6, 1);
        assert!(n.sweep().is_empty(), "open");
        n.get_mut(6).unwrap().opens = 0;
        n.check(6);
        assert_eq!(n.sweep(), vec![6, 5]);
        assert_eq!(n.len(), 1, "only the root is left");
        assert!(n.sweep().is_empty());
    }

    #[test]
    fn unused_nodes_of_an_operation_go_at_its_end_and_keep_their_numbers() {
        let mut n = Nodes::new(2);
        let x = n.allocate();
        let mut node = ONode::new(EntryKind::Regular, ROOT_INO, b"new", None, true);
        node.upper_ino = Some(900);
        n.insert(x, node);
        assert_eq!(n.sweep(), vec![x]);
        assert_eq!(
            n.by_upper(900, EntryKind::Regular),
            Some(x),
            "same number when found again"
        );
        let copying = n.allocate();
        let mut node = ONode::new(EntryKind::Regular, ROOT_INO, b"big", Some(7), false);
        node.copying = true;
        n.insert(copying, node);
        assert!(n.sweep().is_empty(), "a node being copied up stays");
    }
}
