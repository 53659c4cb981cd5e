//! The merged view under the lock: which node a name resolves to (upper first, lower unless
//! whited out or hidden by an opaque or moved directory), the upper directory of a node
//! (walked one name at a time with `O_NOFOLLOW`, then its descriptor kept per node and
//! re-checked with `fstat` at each use), attributes and listings of merged directories.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};

use fuser::{FileAttr, INodeNo};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::locking::Retry;
use super::nodes::ONode;
use super::ops::kind_of_stat;
use super::{attr_of, OverlayFs, OvlError, Result, State};
use crate::model::EntryKind;
use crate::union::ROOT_INO;
use crate::upper::{self, is_whiteout, stat_at};

/// Upper directory descriptors kept open (well under the default limit of 1024 files).
const MAX_CACHED_DIRS: usize = 256;

impl OverlayFs {
    // ---- shared helpers (lock held) ----

    pub(super) fn node<'a>(&self, st: &'a State, ino: u64) -> Result<&'a ONode> {
        st.nodes.get(ino).ok_or(Errno::NOENT.into())
    }

    /// The upper directory of directory node `ino` (which must be in the upper).
    pub(super) fn upper_dir(&self, st: &State, ino: u64) -> Result<OwnedFd> {
        let path = st.nodes.path(ino).ok_or(OvlError::Errno(Errno::NOENT))?;
        let want = st.nodes.get(ino).filter(|n| n.upper).and_then(|n| n.upper_ino);
        if let Some(want) = want {
            let mut dirs = self.dirs.lock();
            if let Some(fd) = dirs.get(&ino) {
                // The same directory, still linked: it has moved with the node if renamed.
                match rustix::fs::fstat(fd) {
                    Ok(s) if s.st_ino == want && s.st_nlink > 0 => {
                        return Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?);
                    }
                    _ => {
                        dirs.remove(&ino);
                    }
                }
            }
        }
        let fd = self.upper.dir_at(&path)?;
        if let Some(want) = want {
            if rustix::fs::fstat(&fd).is_ok_and(|s| s.st_ino == want) {
                let mut dirs = self.dirs.lock();
                if dirs.len() >= MAX_CACHED_DIRS {
                    dirs.clear();
                }
                dirs.insert(ino, rustix::io::fcntl_dupfd_cloexec(&fd, 0)?);
            }
        }
        Ok(fd)
    }

    /// The upper directory holding `ino`'s first name, and that name (for the root: the root
    /// and an empty name).
    pub(super) fn upper_entry(&self, st: &State, ino: u64) -> Result<(OwnedFd, Vec<u8>)> {
        if ino == ROOT_INO {
            return Ok((self.upper.dir_at(&[])?, Vec::new()));
        }
        let (parent, name) = self
            .node(st, ino)?
            .first_name()
            .cloned()
            .ok_or(OvlError::Errno(Errno::NOENT))?;
        Ok((self.upper_dir(st, parent)?, name))
    }

    /// Stat of an upper object.
    pub(super) fn upper_stat(&self, st: &State, ino: u64) -> Result<rustix::fs::Stat> {
        let n = self.node(st, ino)?;
        if let Some(fd) = &n.fd {
            return Ok(rustix::fs::fstat(fd)?);
        }
        let (dir, name) = self.upper_entry(st, ino)?;
        if name.is_empty() {
            return Ok(rustix::fs::fstat(&dir)?);
        }
        Ok(rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Whether directory `parent`'s lower side has `name` (so removing it needs a whiteout).
    pub(super) fn lower_has(&self, st: &State, parent: u64, name: &[u8]) -> Result<bool> {
        match self.node(st, parent)?.lower {
            Some(l) => Ok(self.lower_child(l, name)?.is_some()),
            None => Ok(false),
        }
    }

    /// The object at `name` in directory `parent`, if any (registering it).
    pub(super) fn resolve(&self, st: &mut State, parent: u64, name: &[u8]) -> Result<Option<u64>> {
        let p = self.node(st, parent)?;
        if p.kind != EntryKind::Directory {
            return Err(Errno::NOTDIR.into());
        }
        let (p_upper, p_lower) = (p.upper, p.lower);
        if p_upper {
            let dir = self.upper_dir(st, parent)?;
            if let Some(s) = stat_at(dir.as_fd(), name)? {
                if is_whiteout(&s) {
                    return Ok(None);
                }
                let kind = kind_of_stat(&s);
                let ino = if kind == EntryKind::Directory {
                    let fd = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    let lower = if upper::is_opaque(fd.as_fd()) {
                        None
                    } else if let Some(r) = upper::redirect_of(fd.as_fd()) {
                        self.redirected(&r, p_lower)?
                    } else {
                        match p_lower {
                            Some(l) => self.lower_child(l, name)?,
                            None => None,
                        }
                    };
                    let lower = match lower {
                        Some(l) if self.lower.kind(l)? == EntryKind::Directory => Some(l),
                        _ => None,
                    };
                    match lower {
                        Some(l) => l,
                        None => self.upper_object(st, s.st_ino, kind),
                    }
                } else {
                    self.upper_object(st, s.st_ino, kind)
                };
                // A metacopy file's bytes are the lower file's of the same name, or where its
                // redirect says (kernel overlayfs renames one without copying its data up;
                // lamina copies the data up first).
                let data_from = if kind == EntryKind::Regular
                    && upper::get_xattr(&upper::xattr_path(dir.as_fd(), name), upper::METACOPY)?.is_some()
                {
                    let l = match upper::redirect_at(&upper::xattr_path(dir.as_fd(), name)) {
                        Some(r) => self.redirected(&r, p_lower)?,
                        None => match p_lower {
                            Some(pl) => self.lower_child(pl, name)?,
                            None => None,
                        },
                    };
                    match l {
                        Some(l) if self.lower.kind(l)? == EntryKind::Regular => Some(l),
                        // Its data is gone from below: reads fail rather than show zeros.
                        _ => return Err(Errno::IO.into()),
                    }
                } else {
                    None
                };
                match st.nodes.get_mut(ino) {
                    Some(n) => {
                        n.upper = true;
                        st.nodes.add_name(ino, parent, name);
                    }
                    None => {
                        let lower = (kind == EntryKind::Directory && ino < super::nodes::UPPER_BASE).then_some(ino);
                        let mut n = ONode::new(kind, parent, name, lower.or(data_from), true);
                        n.metacopy = data_from.is_some();
                        st.nodes.insert(ino, n);
                    }
                }
                st.nodes.set_upper(ino, s.st_ino);
                return Ok(Some(ino));
            }
        }
        let Some(pl) = p_lower else { return Ok(None) };
        let Some(l) = self.lower_child(pl, name)? else {
            return Ok(None);
        };
        match st.nodes.get(l) {
            Some(_) => st.nodes.add_name(l, parent, name),
            None => {
                let kind = self.lower.kind(l)?;
                st.nodes.insert(l, ONode::new(kind, parent, name, Some(l), false));
            }
        }
        Ok(Some(l))
    }

    /// The node number of the upper object with upper inode `upper_ino`, or a new one.
    fn upper_object(&self, st: &mut State, upper_ino: u64, kind: EntryKind) -> u64 {
        match st.nodes.by_upper(upper_ino, kind) {
            Some(ino) => ino,
            None => st.nodes.allocate(),
        }
    }

    /// The child `name` of lower directory `parent`, once the union's answer is final: if it
    /// is not yet, the operation runs again after waiting for it without the lock.
    pub(super) fn lower_child(&self, parent: u64, name: &[u8]) -> Result<Option<u64>> {
        match self.lower.child_now(parent, name)? {
            Some(child) => Ok(child),
            None => Err(Retry::Lookup(parent, name.to_vec()).into()),
        }
    }

    /// The children of lower directory `ino` (the union must be whole).
    fn lower_children(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        if !self.lower.is_complete() {
            return Err(Retry::Complete.into());
        }
        Ok(self.lower.children(ino)?)
    }

    /// Every (parent, name) of lower node `ino` (the union must be whole).
    pub(super) fn lower_names(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if !self.lower.is_complete() {
            return Err(Retry::Complete.into());
        }
        Ok(self.lower.names(ino)?)
    }

    /// The union node at a path (names from the root), if there is one.
    /// The lower object a redirect names, from the parent's lower `p_lower` if relative.
    fn redirected(&self, r: &upper::Redirect, p_lower: Option<u64>) -> Result<Option<u64>> {
        match (r, p_lower) {
            (upper::Redirect::Absolute(path), _) => self.lower_at(path),
            (upper::Redirect::Relative(name), Some(pl)) => self.lower_child(pl, name),
            (upper::Redirect::Relative(_), None) => Ok(None),
        }
    }

    fn lower_at(&self, path: &[Vec<u8>]) -> Result<Option<u64>> {
        let mut ino = ROOT_INO;
        for name in path {
            match self.lower_child(ino, name)? {
                Some(c) => ino = c,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    pub(super) fn attr(&self, st: &State, ino: u64) -> Result<FileAttr> {
        let n = self.node(st, ino)?;
        if n.upper {
            let s = self.upper_stat(st, ino)?;
            return Ok(attr_of(ino, &s));
        }
        let l = n.lower.ok_or(OvlError::Errno(Errno::NOENT))?;
        let mut a = self.lower.getattr(l)?;
        a.ino = INodeNo(ino);
        Ok(a)
    }

    /// The merged children of directory `ino`: name, node, type.
    pub(super) fn listing(&self, st: &mut State, ino: u64) -> Result<super::data::Listing> {
        let n = self.node(st, ino)?;
        if n.kind != EntryKind::Directory {
            return Err(Errno::NOTDIR.into());
        }
        let (is_upper, lower) = (n.upper, n.lower);
        if !self.lower.is_complete() {
            // Listings wait for the whole union (and then no name of it waits).
            return Err(Retry::Complete.into());
        }
        let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        if is_upper {
            let dir = self.upper_dir(st, ino)?;
            let mut d = rustix::fs::Dir::read_from(&dir)?;
            for e in d.by_ref() {
                let e = e?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                seen.insert(name.to_vec());
                if let Some(s) = stat_at(dir.as_fd(), name)? {
                    if !is_whiteout(&s) {
                        names.insert(name.to_vec());
                    }
                }
            }
        }
        if let Some(l) = lower {
            for (name, _) in self.lower_children(l)? {
                if !seen.contains(&name) {
                    names.insert(name);
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(child) = self.resolve(st, ino, &name)? {
                let kind = self.node(st, child)?.kind;
                out.push((name, child, crate::view::file_type(kind)));
            }
        }
        Ok(out)
    }
}
