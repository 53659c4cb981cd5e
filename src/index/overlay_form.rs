//! One layer in the form kernel overlayfs reads a lower directory in: an OCI whiteout
//! `DIR/.wh.NAME` becomes `DIR/NAME`, a 0/0 character device, and an opaque marker
//! `DIR/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on DIR. This is what
//! containers/storage expects of an additional layer store's `diff` directory, which it stacks
//! as an overlay lower directory.
//!
//! The OCI rule that a whiteout hides only what lower layers made holds in this form by
//! itself: a name this layer makes (before or after its whiteout) is an entry of the upper
//! directory, which hides the lower one anyway, so such a whiteout is dropped.

use std::collections::{HashMap, HashSet};

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
    // What the layer makes: its entries, and the directories they imply.
    let mut made: HashMap<LayerPath, EntryKind> = HashMap::new();
    let mut implied: Vec<LayerPath> = Vec::new();
    let mut implied_set: HashSet<LayerPath> = HashSet::new();
    let mut opaque: HashSet<LayerPath> = HashSet::new();
    let mut whiteouts: Vec<(LayerPath, &IndexEntry)> = Vec::new();
    let mut imply = |path: &LayerPath, implied: &mut Vec<LayerPath>| {
        let mut p = path.split_last().map(|(p, _)| p);
        while let Some(dir) = p.filter(|d| !d.is_root()) {
            if !implied_set.insert(dir.clone()) {
                break;
            }
            p = dir.split_last().map(|(p, _)| p);
            implied.push(dir);
        }
    };
    for e in &layer.entries {
        match classify(&e.path) {
            Ok(Marker::Plain) => {
                made.insert(e.path.clone(), e.kind);
                imply(&e.path, &mut implied);
            }
            Ok(Marker::Opaque { dir }) => {
                imply(&e.path, &mut implied);
                opaque.insert(dir);
            }
            Ok(Marker::Whiteout { target }) => {
                // The device it becomes sits in its directory: that one is written into.
                imply(&e.path, &mut implied);
                whiteouts.push((target, e));
            }
            _ => {}
        }
    }
    // A whiteout of a directory this layer makes (with an entry or implied by one) hides the
    // lower directory's contents: in overlay form that directory is opaque. A whiteout of a
    // non-directory this layer makes is moot (the new entry hides the lower one).
    let mut devices = Vec::new();
    let mut whited: HashSet<LayerPath> = HashSet::new();
    for (target, e) in whiteouts {
        whited.insert(target.clone());
        match made.get(&target) {
            Some(EntryKind::Directory) => {
                opaque.insert(target);
            }
            Some(_) => {}
            None if implied_set.contains(&target) => {
                opaque.insert(target);
            }
            None => devices.push((target, e)),
        }
    }
    // Whether the lower layers' metadata of `p` is hidden: `p` or a directory above it is
    // whited out, or a directory strictly above it is opaque.
    let hidden = |p: &LayerPath| {
        if whited.contains(p) {
            return true;
        }
        let mut a = p.split_last().map(|(a, _)| a);
        while let Some(dir) = a {
            if whited.contains(&dir) || opaque.contains(&dir) {
                return true;
            }
            a = dir.split_last().map(|(a, _)| a);
        }
        false
    };
    let mut out = LayerIndex {
        codec: layer.codec,
        entries: Vec::with_capacity(layer.entries.len() + implied.len()),
        chunks: Vec::new(),
    };
    // Directories the layer writes into without an entry, shallowest first, with the lower
    // layers' metadata where it shows.
    implied.retain(|d| !made.contains_key(d));
    implied.sort_by_key(|d| d.components().count());
    for dir in implied {
        let mut meta = (!hidden(&dir))
            .then(|| lower(&dir))
            .flatten()
            .filter(|m| m.kind == EntryKind::Directory)
            .unwrap_or_else(|| Meta::new(EntryKind::Directory, 0o755));
        strip_overlay_xattrs(&mut meta);
        if opaque.contains(&dir) {
            mark_opaque(&mut meta);
        }
        out.push_entry(IndexEntry::new(dir, meta, None), Vec::new());
    }
    for e in &layer.entries {
        if classify(&e.path) == Ok(Marker::Plain) {
            let mut entry = e.clone();
            strip_overlay_xattrs(&mut entry.meta);
            if entry.kind == EntryKind::Directory && opaque.contains(&entry.path) {
                mark_opaque(&mut entry.meta);
            }
            out.push_entry(entry, layer.chunks_of(e).to_vec());
        }
    }
    for (target, e) in devices {
        let mut meta = Meta::new(EntryKind::CharDevice, 0);
        meta.mtime_secs = e.mtime_secs;
        meta.mtime_nanos = e.mtime_nanos;
        out.push_entry(IndexEntry::new(target, meta, None), Vec::new());
    }
    out
}

/// overlayfs reads its own xattrs from a lower directory (`redirect`, `origin`, `metacopy`
/// …): a layer's own copies of them must not reach the kernel.
fn strip_overlay_xattrs(meta: &mut Meta) {
    meta.xattrs
        .retain(|(k, _)| !k.starts_with(b"trusted.overlay.") && !k.starts_with(b"user.overlay."));
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
        assert_eq!(
            shown(&form),
            vec![
                ("/b".to_string(), EntryKind::Directory, true),
                ("/a".to_string(), EntryKind::Directory, true),
                ("/a/kept".to_string(), EntryKind::Regular, false),
                ("/a/gone".to_string(), EntryKind::CharDevice, false),
            ]
        );
        // b: written into without an entry: the lower layers' metadata, marked opaque.
        assert_eq!((form.entries[0].mode, form.entries[0].mtime_secs), (0o700, 7));
        let dev = &form.entries[3];
        assert_eq!((dev.dev_major, dev.dev_minor, dev.mode), (0, 0, 0));
    }

    fn shown(form: &LayerIndex) -> Vec<(String, EntryKind, bool)> {
        form.entries
            .iter()
            .map(|e| {
                (
                    e.path.to_string(),
                    e.kind,
                    e.xattrs.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y"),
                )
            })
            .collect()
    }

    #[test]
    fn a_whited_out_directory_made_again_is_opaque_and_hides_lower_metadata() {
        let mut layer = LayerIndex::default();
        let mut with_redirect = entry("d/f", EntryKind::Regular);
        with_redirect
            .meta
            .xattrs
            .push((b"trusted.overlay.redirect".to_vec(), b"/x".to_vec()));
        for e in [
            entry(".wh.x", EntryKind::Regular),
            entry("x/y", EntryKind::Regular),
            entry("d", EntryKind::Directory),
            entry(".wh.d", EntryKind::Regular),
            with_redirect,
        ] {
            layer.push_entry(e, Vec::new());
        }
        let mut old = Meta::new(EntryKind::Directory, 0o700);
        old.mtime_secs = 7;
        let form = overlay_form(&layer, |_| Some(old.clone()));
        assert_eq!(
            shown(&form),
            vec![
                ("/x".to_string(), EntryKind::Directory, true),
                ("/x/y".to_string(), EntryKind::Regular, false),
                ("/d".to_string(), EntryKind::Directory, true),
                ("/d/f".to_string(), EntryKind::Regular, false),
            ]
        );
        // x was whited out: none of the lower x shows, not even its metadata.
        assert_eq!(form.entries[0].mode, 0o755);
        assert!(
            form.entries[3].xattrs.is_empty(),
            "the layer's own overlay xattrs are gone"
        );
    }
}
