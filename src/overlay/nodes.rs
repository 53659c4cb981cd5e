//! The writable mount's inodes: each object of the merged view, where it lives (the lower
//! union, the upper directory, or both) and the names it is reached by.
//!
//! An object that comes from the image keeps the union's inode number (so a lower hard-link
//! group is one inode, before and after copy-up); an object made in the upper gets a number
//! of its own, above [`UPPER_BASE`]. Upper objects are also found by their inode number in the
//! upper directory, which is how a copied-up hard-link group stays one inode.

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
    pub names: Vec<(u64, Vec<u8>)>,
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
        }
    }

    /// Record one more name (if new).
    pub fn add_name(&mut self, parent: u64, name: &[u8]) {
        if !self.names.iter().any(|(p, n)| *p == parent && n == name) {
            self.names.push((parent, name.to_vec()));
        }
    }

    /// Forget a name (unlinked, or renamed away).
    pub fn remove_name(&mut self, parent: u64, name: &[u8]) {
        self.names.retain(|(p, n)| !(*p == parent && n == name));
    }
}

/// Every object the kernel has been told about.
#[derive(Debug)]
pub struct Nodes {
    map: HashMap<u64, ONode>,
    by_upper: HashMap<u64, u64>,
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
        by_upper.insert(root_upper_ino, ROOT_INO);
        Nodes {
            map,
            by_upper,
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

    /// Put a node in (or replace it).
    pub fn insert(&mut self, ino: u64, node: ONode) {
        if let Some(u) = node.upper_ino {
            self.by_upper.insert(u, ino);
        }
        self.map.insert(ino, node);
    }

    /// A number for a new upper object.
    pub fn allocate(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The object whose upper inode number is `upper_ino`.
    pub fn by_upper(&self, upper_ino: u64) -> Option<u64> {
        self.by_upper.get(&upper_ino).copied()
    }

    /// Note that `ino` now lives in the upper as `upper_ino`.
    pub fn set_upper(&mut self, ino: u64, upper_ino: u64) {
        if let Some(n) = self.map.get_mut(&ino) {
            n.upper = true;
            if let Some(old) = n.upper_ino.replace(upper_ino) {
                self.by_upper.remove(&old);
            }
            self.by_upper.insert(upper_ino, ino);
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
        let f = n.get_mut(6).unwrap();
        f.remove_name(5, b"f");
        f.add_name(x, b"g");
        assert_eq!(n.path(6).unwrap(), vec![b"b".to_vec(), b"g".to_vec()]);
        assert!(n.is_within(6, x) && !n.is_within(6, 5) && n.is_within(x, ROOT_INO));
        n.get_mut(6).unwrap().remove_name(x, b"g");
        assert!(n.path(6).is_none());
        n.set_upper(6, 77);
        assert_eq!(n.by_upper(77), Some(6));
        n.drop_upper(77);
        assert_eq!(n.by_upper(77), None);
    }
}
