//! The union view: layer indexes merged bottom to top into one tree with stable inode numbers,
//! by the same changeset rules as the full pull ([`crate::changeset`], ARCHITECTURE.md).
//!
//! ```text
//! for each layer, bottom first, each entry in stream order (as `lamina pull` applies a tar):
//!   - a whiteout or opaque marker hides what the layers below built, never what this layer
//!     made or makes later ([`LayerRules`], shared with the applier)
//!   - a plain entry: a directory over a directory merges; anything else replaces; a parent
//!     that is not a directory is replaced by one (never followed)
//! ```
//!
//! Stream order lets a layer be merged while it is still arriving ([`live`]).
//!
//! Invariants: inode numbers are indexes into `nodes` (+1), fixed for the life of a mount;
//! hard links of one layer are one node reached by several names; only nodes reachable from
//! the root are ever served.

use std::collections::BTreeMap;

pub mod live;

use crate::changeset::{classify, LayerPath, LayerRules, Marker};
use crate::index::{IndexEntry, LayerIndex};
use crate::model::{EntryKind, Meta};

/// The root's inode number.
pub const ROOT_INO: u64 = 1;
/// Most objects in one image's union, all layers together (each layer's TOC is capped on its
/// own, and several layers would multiply it): the largest real images hold well under a
/// million; each node costs ~200 bytes and every mount holds them all.
pub const MAX_IMAGE_NODES: usize = 4_000_000;
/// Most entries of a layer streamed without a TOC (a TOC's entries are capped when it is read).
pub const MAX_STREAMED_LAYER_ENTRIES: usize = 4_000_000;

/// One object of the union.
#[derive(Clone, Debug)]
pub struct Node {
    /// Kind (never `HardLink`: links are resolved to their target's node), mode, owner, mtime,
    /// size, symlink target (empty for other kinds), device numbers, xattrs.
    pub meta: Meta,
    /// Where a regular file's chunks are: (layer index, entry index).
    pub source: Option<(usize, usize)>,
    /// Names (hard links) pointing at this node, for nlink.
    pub nlink: u32,
    /// Children of a directory, by name.
    pub children: BTreeMap<Vec<u8>, u64>,
    /// The parent directory's inode (for `..`).
    pub parent: u64,
}

crate::extends_meta!(Node);

/// The merged tree of an image.
#[derive(Debug)]
pub struct Union {
    nodes: Vec<Node>,
    /// [`MAX_IMAGE_NODES`] (smaller in tests).
    max_nodes: usize,
}

/// A layer cannot be merged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("layer {layer}: entry {entry}: {reason}")]
pub struct UnionError {
    /// Index of the layer, bottom = 0.
    pub layer: usize,
    /// The entry.
    pub entry: String,
    /// Why.
    pub reason: String,
}

fn implicit_dir(parent: u64) -> Node {
    Node {
        meta: Meta::new(EntryKind::Directory, 0o755),
        source: None,
        nlink: 1,
        children: BTreeMap::new(),
        parent,
    }
}

impl Default for Union {
    fn default() -> Self {
        Union::new()
    }
}

impl Union {
    /// A union of no layers: an empty root.
    pub fn new() -> Union {
        Union {
            nodes: vec![implicit_dir(ROOT_INO)],
            max_nodes: MAX_IMAGE_NODES,
        }
    }

    /// Merge `layers`, bottom first.
    pub fn build(layers: &[LayerIndex]) -> Result<Union, UnionError> {
        let mut u = Union::new();
        for (li, layer) in layers.iter().enumerate() {
            let mut rules = LayerRules::default();
            for (ei, e) in layer.entries.iter().enumerate() {
                u.apply_entry(&mut rules, li, ei, e)?;
            }
        }
        u.count_links();
        Ok(u)
    }

    /// Merge entry `ei` of layer `li` over everything merged so far. `rules` is the layer's
    /// record, kept from its first entry to its last.
    pub fn apply_entry(
        &mut self,
        rules: &mut LayerRules,
        li: usize,
        ei: usize,
        e: &IndexEntry,
    ) -> Result<(), UnionError> {
        let err = |reason: String| UnionError {
            layer: li,
            entry: e.path.to_string(),
            reason,
        };
        // Checked before the entry adds anything (it adds at most one node per path component).
        if self.nodes.len() >= self.max_nodes {
            return Err(err(format!(
                "the image holds more than {} objects (all layers together); refused",
                self.max_nodes
            )));
        }
        match classify(&e.path).map_err(|x| err(x.to_string()))? {
            Marker::AufsMeta => {}
            Marker::Whiteout { target } => {
                if !rules.made(&target) {
                    self.remove(&target);
                } else if let Some(ino) = self.lookup_path(&target) {
                    self.remove_lower_children(rules, ino, &target);
                }
                rules.whited_out.insert(target);
            }
            Marker::Opaque { dir } => {
                if let Some(ino) = self.lookup_path(&dir) {
                    self.remove_lower_children(rules, ino, &dir);
                }
                rules.opaque.insert(dir);
            }
            Marker::Plain => {
                self.apply(rules, li, ei, e).map_err(err)?;
                rules.touched.insert(e.path.clone());
            }
        }
        Ok(())
    }

    /// Recompute link counts (after a layer is complete).
    pub fn finish_layer(&mut self) {
        self.count_links();
    }

    /// The path of a directory (or of the first name of a file), walking up from `ino`.
    pub fn path_of(&self, mut ino: u64) -> Option<LayerPath> {
        let mut names: Vec<&[u8]> = Vec::new();
        while ino != ROOT_INO {
            let parent = self.get(ino)?.parent;
            let name = self.get(parent)?.children.iter().find(|(_, c)| **c == ino)?.0;
            names.push(name);
            ino = parent;
        }
        let mut path = LayerPath::root();
        for n in names.iter().rev() {
            path = path.join(n);
        }
        Some(path)
    }

    /// Remove the children of directory `ino` (at `path`) that this layer did not make,
    /// recursing into the directories it did make (they may have merged with lower ones).
    fn remove_lower_children(&mut self, rules: &LayerRules, ino: u64, path: &LayerPath) {
        if self.node(ino).kind != EntryKind::Directory {
            return;
        }
        let children: Vec<(Vec<u8>, u64)> = self.node(ino).children.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (name, child) in children {
            let child_path = path.join(&name);
            if !rules.made(&child_path) {
                self.nodes[(ino - 1) as usize].children.remove(&name);
            } else {
                self.remove_lower_children(rules, child, &child_path);
            }
        }
    }

    /// A node by inode number.
    pub fn node(&self, ino: u64) -> &Node {
        &self.nodes[(ino - 1) as usize]
    }

    /// A node by inode number, if it exists.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The child `name` of directory `ino`.
    pub fn child(&self, ino: u64, name: &[u8]) -> Option<u64> {
        self.get(ino)?.children.get(name).copied()
    }

    /// Resolve a normalized path without following symlinks.
    pub fn lookup_path(&self, path: &LayerPath) -> Option<u64> {
        let mut ino = ROOT_INO;
        for c in path.components() {
            ino = self.child(ino, c)?;
        }
        Some(ino)
    }

    /// Number of nodes (reachable or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the union is only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    fn push(&mut self, node: Node) -> u64 {
        self.nodes.push(node);
        self.nodes.len() as u64
    }

    fn remove(&mut self, path: &LayerPath) {
        if let Some((parent, name)) = path.split_last() {
            if let Some(p) = self.lookup_path(&parent) {
                self.nodes[(p - 1) as usize].children.remove(name);
            }
        }
    }

    /// The directory at `path`, creating missing components (made by this layer) and
    /// replacing non-directories.
    fn dir_for(&mut self, rules: &mut LayerRules, path: &LayerPath) -> u64 {
        let mut ino = ROOT_INO;
        let mut walked = LayerPath::root();
        for c in path.components() {
            walked = walked.join(c);
            ino = match self.child(ino, c) {
                Some(child) if self.node(child).kind == EntryKind::Directory => child,
                _ => {
                    let new = self.push(implicit_dir(ino));
                    self.nodes[(ino - 1) as usize].children.insert(c.to_vec(), new);
                    rules.touched.insert(walked.clone());
                    new
                }
            };
        }
        ino
    }

    fn apply(&mut self, rules: &mut LayerRules, layer: usize, entry: usize, e: &IndexEntry) -> Result<(), String> {
        let Some((parent_path, name)) = e.path.split_last() else {
            if e.kind != EntryKind::Directory {
                return Err("the root entry is not a directory".into());
            }
            let root = &mut self.nodes[0];
            (root.mode, root.uid, root.gid, root.mtime_secs, root.mtime_nanos) =
                (e.mode, e.uid, e.gid, e.mtime_secs, e.mtime_nanos);
            root.xattrs = e.xattrs.clone();
            return Ok(());
        };
        let parent = self.dir_for(rules, &parent_path);
        let existing = self.child(parent, name);
        if e.kind == EntryKind::HardLink {
            let target = LayerPath::normalize(&e.link).map_err(|x| x.to_string())?;
            let t = self
                .lookup_path(&target)
                .ok_or_else(|| format!("hard link target {target} does not exist in the image"))?;
            if self.node(t).kind == EntryKind::Directory {
                return Err(format!("hard link target {target} is a directory"));
            }
            self.nodes[(parent - 1) as usize].children.insert(name.to_vec(), t);
            self.nodes[(t - 1) as usize].nlink += 1;
            return Ok(());
        }
        if e.kind == EntryKind::Directory {
            if let Some(d) = existing.filter(|d| self.node(*d).kind == EntryKind::Directory) {
                let n = &mut self.nodes[(d - 1) as usize];
                (n.mode, n.uid, n.gid, n.mtime_secs, n.mtime_nanos) =
                    (e.mode, e.uid, e.gid, e.mtime_secs, e.mtime_nanos);
                n.xattrs = e.xattrs.clone();
                return Ok(());
            }
        }
        let mut meta = e.meta.clone();
        if e.kind != EntryKind::Symlink {
            meta.link.clear();
        }
        let node = Node {
            meta,
            source: (e.kind == EntryKind::Regular).then_some((layer, entry)),
            nlink: 1,
            children: BTreeMap::new(),
            parent,
        };
        let ino = self.push(node);
        self.nodes[(parent - 1) as usize].children.insert(name.to_vec(), ino);
        Ok(())
    }

    /// nlink: names for files, 2 + subdirectories for directories (reachable nodes only).
    fn count_links(&mut self) {
        for n in &mut self.nodes {
            n.nlink = 0;
        }
        let mut stack = vec![ROOT_INO];
        self.nodes[0].nlink = 2;
        while let Some(dir) = stack.pop() {
            let children: Vec<u64> = self.node(dir).children.values().copied().collect();
            for c in children {
                let is_dir = self.node(c).kind == EntryKind::Directory;
                if is_dir {
                    self.nodes[(c - 1) as usize].nlink = 2;
                    self.nodes[(c - 1) as usize].parent = dir;
                    self.nodes[(dir - 1) as usize].nlink += 1;
                    stack.push(c);
                } else {
                    self.nodes[(c - 1) as usize].nlink += 1;
                }
            }
        }
    }
}

/// Entries and layers for the union's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn e(path: &str, kind: EntryKind) -> IndexEntry {
        IndexEntry::new(
            LayerPath::normalize(path.as_bytes()).unwrap(),
            crate::model::Meta::new(kind, 0o644),
            None,
        )
    }

    pub fn layer(entries: Vec<IndexEntry>) -> LayerIndex {
        LayerIndex {
            entries,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::testing::{e, layer};

    fn names(u: &Union, path: &str) -> Vec<String> {
        let ino = u.lookup_path(&LayerPath::normalize(path.as_bytes()).unwrap()).unwrap();
        u.node(ino)
            .children
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn the_node_cap_counts_every_layer_together() {
        use EntryKind::*;
        let l0 = layer(vec![e("f1", Regular), e("f2", Regular)]);
        let l1 = layer(vec![e("g1", Regular), e("g2", Regular), e("g3", Regular)]);
        let merge = |layers: &[&LayerIndex]| -> Result<Union, UnionError> {
            // Root + 4 nodes: each layer alone fits, the two together do not.
            let mut u = Union {
                max_nodes: 5,
                ..Union::new()
            };
            for (li, l) in layers.iter().enumerate() {
                let mut rules = LayerRules::default();
                for (ei, x) in l.entries.iter().enumerate() {
                    u.apply_entry(&mut rules, li, ei, x)?;
                }
            }
            Ok(u)
        };
        assert!(merge(&[&l0]).is_ok());
        assert!(merge(&[&l1]).is_ok());
        let err = merge(&[&l0, &l1]).unwrap_err();
        assert_eq!((err.layer, err.entry.as_str()), (1, "/g3"), "{err}");
        assert!(
            err.reason.contains("more than 5 objects (all layers together)"),
            "{err}"
        );
    }

    #[test]
    fn whiteouts_opaque_and_replacement() {
        use EntryKind::*;
        let mut link = e("d/link", HardLink);
        link.link = b"d/file".to_vec();
        let mut sym = e("s", Symlink);
        sym.link = b"/etc".to_vec();
        let l0 = layer(vec![
            e("d", Directory),
            e("d/file", Regular),
            e("d/gone", Regular),
            e("o/old", Regular),
            sym,
            e("f", Regular),
        ]);
        // Whiteout after the same-layer entry it names: the entry survives (lower-only rule).
        let l1 = layer(vec![
            e("d/gone", Regular),
            e("d/.wh.gone", Regular),
            e("o/new", Regular),
            e("o/.wh..wh..opq", Regular),
            e("s/inside", Regular),
            e("f/now-dir", Regular),
            link,
        ]);
        let u = Union::build(&[l0, l1]).unwrap();
        assert_eq!(names(&u, "d"), ["file", "gone", "link"]);
        assert_eq!(names(&u, "o"), ["new"]);
        assert_eq!(names(&u, "s"), ["inside"]);
        assert_eq!(names(&u, "f"), ["now-dir"]);
        let p = |s: &str| LayerPath::normalize(s.as_bytes()).unwrap();
        let (a, b) = (
            u.lookup_path(&p("d/file")).unwrap(),
            u.lookup_path(&p("d/link")).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(u.node(a).nlink, 2);
        assert_eq!(u.node(u.lookup_path(&p("d")).unwrap()).nlink, 2);
    }

    #[test]
    fn hard_link_to_nothing_is_an_error() {
        let mut link = e("x", EntryKind::HardLink);
        link.link = b"missing".to_vec();
        let err = Union::build(&[layer(vec![link])]).unwrap_err();
        assert!(err.reason.contains("does not exist"), "{err}");
    }
}
