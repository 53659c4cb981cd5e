//! One layer in the form kernel overlayfs reads a lower directory in: an OCI whiteout
//! `DIR/.wh.NAME` becomes `DIR/NAME`, a 0/0 character device, and an opaque marker
//! `DIR/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on DIR. This is what
//! containers/storage expects of an additional layer store's `diff` directory, which it stacks
//! as an overlay lower directory.
//!
//! The OCI rule that a whiteout hides only what lower layers made holds in this form by
//! itself: a name this layer makes (before or after its whiteout) is an entry of the upper
//! directory, which hides the lower one anyway, so such a whiteout is dropped.

use std::collections::HashSet;

use crate::changeset::{classify, LayerPath, Marker};
use crate::model::{EntryKind, Meta};

use super::{IndexEntry, LayerIndex};

/// The xattr that marks an opaque directory for overlayfs.
pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// `layer` with its whiteouts and opaque markers in overlayfs form (chunks are shared; entry
/// positions change, so the result is read on its own, not beside the original).
///
/// A directory the layer writes into without carrying an entry for it would be made with
/// made-up metadata, and overlayfs shows a merged directory with the metadata of its upper
/// side: `lower(path)` gives the metadata the layers below have for it, and the directory is
/// added with that, so the stack shows what the layers below said (as `umoci unpack` and
/// `lamina mount` do).
pub fn overlay_form(layer: &LayerIndex, lower: impl Fn(&LayerPath) -> Option<Meta>) -> LayerIndex {
    let mut made: HashSet<LayerPath> = HashSet::new();
    let mut opaque: Vec<LayerPath> = Vec::new();
    for e in &layer.entries {
        match classify(&e.path) {
            Ok(Marker::Plain) => {
                made.insert(e.path.clone());
            }
            Ok(Marker::Opaque { dir }) => opaque.push(dir),
            _ => {}
        }
    }
    let mut out = LayerIndex {
        codec: layer.codec,
        entries: Vec::with_capacity(layer.entries.len()),
        chunks: Vec::new(),
    };
    // Parents the layer writes into without an entry of their own, shallowest first.
    let mut parents: Vec<LayerPath> = Vec::new();
    let mut seen: HashSet<LayerPath> = HashSet::new();
    for e in &layer.entries {
        let mut p = e.path.split_last().map(|(p, _)| p);
        let mut chain = Vec::new();
        while let Some(dir) = p.filter(|d| !d.is_root()) {
            if !seen.insert(dir.clone()) {
                break;
            }
            p = dir.split_last().map(|(p, _)| p);
            chain.push(dir);
        }
        parents.extend(chain);
    }
    parents.retain(|d| !made.contains(d));
    parents.sort_by_key(|d| d.components().count());
    let mut has_dir: HashSet<LayerPath> = HashSet::new();
    for dir in parents {
        if let Some(mut meta) = lower(&dir).filter(|m| m.kind == EntryKind::Directory) {
            if opaque.contains(&dir) {
                mark_opaque(&mut meta);
            }
            has_dir.insert(dir.clone());
            out.push_entry(IndexEntry::new(dir, meta, None), Vec::new());
        }
    }
    for e in &layer.entries {
        match classify(&e.path) {
            Ok(Marker::Plain) => {
                let mut entry = e.clone();
                if entry.kind == EntryKind::Directory {
                    has_dir.insert(entry.path.clone());
                    if opaque.contains(&entry.path) {
                        mark_opaque(&mut entry.meta);
                    }
                }
                out.push_entry(entry, layer.chunks_of(e).to_vec());
            }
            Ok(Marker::Whiteout { target }) if !made.contains(&target) => {
                let mut meta = Meta::new(EntryKind::CharDevice, 0);
                meta.mtime_secs = e.mtime_secs;
                meta.mtime_nanos = e.mtime_nanos;
                out.push_entry(IndexEntry::new(target, meta, None), Vec::new());
            }
            // A whiteout of a name this layer makes, an opaque marker (an xattr now), or a
            // name that is not valid (the union refuses those as it always does).
            _ => {}
        }
    }
    // An opaque directory whose own entry the layer does not carry.
    for dir in opaque.into_iter().filter(|d| !d.is_root() && !has_dir.contains(d)) {
        let mut meta = Meta::new(EntryKind::Directory, 0o755);
        mark_opaque(&mut meta);
        out.push_entry(IndexEntry::new(dir, meta, None), Vec::new());
    }
    out
}

fn mark_opaque(meta: &mut Meta) {
    meta.xattrs.retain(|(k, _)| k != OPAQUE_XATTR);
    meta.xattrs.push((OPAQUE_XATTR.to_vec(), b"y".to_vec()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> IndexEntry {
        IndexEntry::new(
            LayerPath::normalize(path.as_bytes()).unwrap(),
            Meta::new(kind, 0o755),
            None,
        )
    }

    #[test]
    fn whiteouts_become_devices_and_markers_xattrs() {
        let mut layer = LayerIndex::default();
        for e in [
            entry("a", EntryKind::Directory),
            entry("a/.wh..wh..opq", EntryKind::Regular),
            entry("a/.wh.gone", EntryKind::Regular),
            entry("a/kept", EntryKind::Regular),
            entry("a/.wh.kept", EntryKind::Regular),
            entry("b/.wh..wh..opq", EntryKind::Regular),
        ] {
            layer.push_entry(e, Vec::new());
        }
        let mut old = Meta::new(EntryKind::Directory, 0o700);
        old.mtime_secs = 7;
        let form = overlay_form(&layer, |p| (p.as_bytes() == b"b").then(|| old.clone()));
        let shown: Vec<(String, EntryKind, bool)> = form
            .entries
            .iter()
            .map(|e| {
                (
                    e.path.to_string(),
                    e.kind,
                    e.xattrs.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y"),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("/b".to_string(), EntryKind::Directory, true),
                ("/a".to_string(), EntryKind::Directory, true),
                ("/a/gone".to_string(), EntryKind::CharDevice, false),
                ("/a/kept".to_string(), EntryKind::Regular, false),
            ]
        );
        // b: written into without an entry: the lower layers' metadata, marked opaque.
        assert_eq!((form.entries[0].mode, form.entries[0].mtime_secs), (0o700, 7));
        let dev = &form.entries[2];
        assert_eq!((dev.dev_major, dev.dev_minor, dev.mode), (0, 0, 0));
    }
}
