//! The reference applier: writes layers, bottom first, into a directory with OCI changeset
//! semantics. It is what `lamina pull` uses, and its rules (shared with the union index through
//! [`crate::changeset`]) define what a mount must show.
//!
//! Invariants:
//! - Nothing outside the root is ever written, read or exposed: every path is resolved
//!   component by component from an open root descriptor, never following a symlink
//!   ([`fsops`]). A parent component that is not a directory (a symlink or a file, from this
//!   layer or a lower one) is replaced by a directory, as an upper layer's directory hides a
//!   lower non-directory in an overlay union.
//! - Whiteouts and opaque markers act on lower layers only, wherever they stand in the tar:
//!   entries of the same layer survive them.
//! - A hard link resolves inside the tree being built (this layer first, then the union
//!   below); a target that does not exist there rejects the layer, naming the entry.
//! - Owners are applied when running as root; otherwise they are skipped with one warning.

pub mod fsops;

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Timespec};

use crate::changeset::{classify, LayerPath, LayerRules, Marker};
use crate::format::tar::{entry_meta, is_metadata_only, TarEntry};
use crate::model::EntryKind;

/// Size of the copy buffer for file contents.
const COPY_BUFFER_BYTES: usize = 256 * 1024;
/// Mode of a parent directory that no entry describes (containerd's choice).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// A layer could not be applied. Says which layer and which entry.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: {}{reason}", entry.as_ref().map(|e| format!("entry {e}: ")).unwrap_or_default())]
pub struct ApplyError {
    /// The layer (digest or name).
    pub layer: String,
    /// The entry path, when one is to blame.
    pub entry: Option<String>,
    /// What went wrong.
    pub reason: String,
    /// The I/O error underneath, if any.
    #[source]
    pub source: Option<io::Error>,
}

/// Counts from applying one layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries read from the tar (metadata headers excluded).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub file_bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of the uncompressed tar stream, padding included.
    pub tar_bytes: u64,
}

/// Options for applying.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Set owners (needs root). Defaults to whether the process runs as root.
    pub chown: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            chown: rustix::process::geteuid().is_root(),
        }
    }
}

/// Applies layers, in order, to one root directory.
pub struct Applier {
    root: OwnedFd,
    options: ApplyOptions,
    buffer: Vec<u8>,
    warned: HashSet<&'static str>,
}

/// What one layer has done so far, for the lower-only rules.
#[derive(Default)]
struct LayerState {
    /// The lower-only rules' record of this layer.
    rules: LayerRules,
    /// Directory mtimes, set once the layer is complete.
    dir_times: Vec<(LayerPath, Timespec)>,
    /// The last parent directory opened, reused by its siblings.
    cached_parent: Option<(LayerPath, OwnedFd)>,
}

impl Applier {
    /// An applier writing into the existing directory `root`.
    pub fn new(root: &Path, options: ApplyOptions) -> io::Result<Applier> {
        Ok(Applier {
            root: fsops::open_root(root)?,
            options,
            buffer: vec![0; COPY_BUFFER_BYTES],
            warned: HashSet::new(),
        })
    }

    /// Apply one uncompressed layer tar read from `tar`. `layer` names it in errors. The
    /// reader is read to its end (padding after the end-of-archive blocks included), so a
    /// hash around it covers the whole stream.
    pub fn apply_layer<R: Read>(&mut self, layer: &str, tar: R) -> Result<LayerStats, ApplyError> {
        let counted = CountingReader { inner: tar, count: 0 };
        let mut archive = tar::Archive::new(counted);
        let mut state = LayerState::default();
        let mut stats = LayerStats::default();
        let entries = archive.entries().map_err(|e| tar_error(layer, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_error(layer, e))?;
            if is_metadata_only(entry.header().entry_type()) {
                continue;
            }
            let meta = entry_meta(&mut entry).map_err(|e| ApplyError {
                layer: layer.to_string(),
                entry: Some(String::from_utf8_lossy(&entry.path_bytes()).into_owned()),
                reason: e.to_string(),
                source: None,
            })?;
            stats.entries += 1;
            self.apply_entry(&mut state, &mut stats, &meta, &mut entry)
                .map_err(|(reason, source)| ApplyError {
                    layer: layer.to_string(),
                    entry: Some(String::from_utf8_lossy(&meta.path).into_owned()),
                    reason,
                    source,
                })?;
        }
        self.finish_dir_times(&mut state).map_err(|e| tar_error(layer, e))?;
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| tar_error(layer, e))?;
        stats.tar_bytes = rest.count;
        Ok(stats)
    }

    fn apply_entry(
        &mut self,
        state: &mut LayerState,
        stats: &mut LayerStats,
        meta: &TarEntry,
        data: &mut impl Read,
    ) -> Result<(), (String, Option<io::Error>)> {
        let path = LayerPath::normalize(&meta.path).map_err(|e| (e.to_string(), None))?;
        let marker = classify(&path).map_err(|e| (e.to_string(), None))?;
        match marker {
            Marker::AufsMeta => Ok(()),
            Marker::Opaque { dir } => {
                stats.whiteouts += 1;
                let fd = self
                    .resolve_dir(state, &dir)
                    .map_err(io_err("opening the opaque directory"))?;
                self.remove_lower_children(state, fd.as_fd(), &dir)
                    .map_err(io_err("clearing the opaque directory"))?;
                state.rules.opaque.insert(dir);
                Ok(())
            }
            Marker::Whiteout { target } => {
                stats.whiteouts += 1;
                self.whiteout(state, &target).map_err(io_err("applying the whiteout"))?;
                state.rules.whited_out.insert(target);
                Ok(())
            }
            Marker::Plain if path.is_root() => self.apply_root(state, meta).map_err(io_err("setting root attributes")),
            Marker::Plain => {
                let (parent, name) = path.split_last().expect("not the root");
                let dir = self
                    .resolve_dir(state, &parent)
                    .map_err(io_err("resolving the parent directory"))?;
                if state.rules.hides_lower(&path) {
                    fsops::remove_all(dir.as_fd(), name).map_err(io_err("removing a hidden lower entry"))?;
                }
                let written = self.create(state, dir.as_fd(), &path, name, meta, data)?;
                stats.file_bytes += written;
                state.rules.touched.insert(path);
                Ok(())
            }
        }
    }

    /// Create or update the object for one plain entry. Returns file bytes written.
    fn create(
        &mut self,
        state: &mut LayerState,
        dir: BorrowedFd<'_>,
        path: &LayerPath,
        name: &[u8],
        meta: &TarEntry,
        data: &mut impl Read,
    ) -> Result<u64, (String, Option<io::Error>)> {
        let existing = fsops::file_type_at(dir, name).map_err(io_err("inspecting the existing entry"))?;
        if meta.kind == EntryKind::Directory {
            if existing != Some(FileType::Directory) {
                self.replace_existing(state, dir, name, existing)
                    .map_err(io_err("replacing the existing entry"))?;
                fsops::mkdir(dir, name).map_err(io_err("creating the directory"))?;
            }
            let fd = fsops::open_dir(dir, name).map_err(io_err("opening the directory"))?;
            self.set_owner(dir, name, meta).map_err(io_err("setting the owner"))?;
            fsops::fchmod(fd.as_fd(), meta.mode).map_err(io_err("setting the mode"))?;
            self.set_xattrs(dir, name, meta, existing.is_some())
                .map_err(io_err("setting xattrs"))?;
            state.dir_times.push((path.clone(), mtime(meta)));
            return Ok(0);
        }
        if meta.kind == EntryKind::HardLink {
            return self.hard_link(state, dir, name, path, meta).map(|_| 0);
        }
        self.replace_existing(state, dir, name, existing)
            .map_err(io_err("replacing the existing entry"))?;
        let mut written = 0;
        match meta.kind {
            EntryKind::Regular => {
                let mut file = fsops::create_file(dir, name).map_err(io_err("creating the file"))?;
                written =
                    copy_limited(data, &mut file, &mut self.buffer, meta.size).map_err(io_err("writing the file"))?;
                self.set_owner(dir, name, meta).map_err(io_err("setting the owner"))?;
                fsops::fchmod(file.as_fd(), meta.mode).map_err(io_err("setting the mode"))?;
            }
            EntryKind::Symlink => {
                let target = &meta.link[..];
                fsops::symlink(dir, name, target).map_err(io_err("creating the symlink"))?;
                self.set_owner(dir, name, meta).map_err(io_err("setting the owner"))?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let kind = match meta.kind {
                    EntryKind::CharDevice => FileType::CharacterDevice,
                    EntryKind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                fsops::mknod(dir, name, kind, meta.dev_major, meta.dev_minor)
                    .map_err(io_err("creating the device node"))?;
                self.set_owner(dir, name, meta).map_err(io_err("setting the owner"))?;
                fsops::chmod_at(dir, name, meta.mode).map_err(io_err("setting the mode"))?;
            }
            EntryKind::Directory | EntryKind::HardLink => unreachable!("handled above"),
        }
        self.set_xattrs(dir, name, meta, false)
            .map_err(io_err("setting xattrs"))?;
        fsops::set_times(dir, name, mtime(meta)).map_err(io_err("setting times"))?;
        Ok(written)
    }

    fn hard_link(
        &mut self,
        state: &mut LayerState,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &LayerPath,
        meta: &TarEntry,
    ) -> Result<(), (String, Option<io::Error>)> {
        let raw = &meta.link[..];
        let target = LayerPath::normalize(raw).map_err(|e| (format!("hard link target: {e}"), None))?;
        if &target == path {
            return Ok(());
        }
        let not_found = || (format!("hard link target {target} does not exist in the image"), None);
        let (tparent, tname) = target.split_last().ok_or_else(not_found)?;
        let tdir = self.lookup_dir(&tparent).map_err(|_| not_found())?;
        match fsops::file_type_at(tdir.as_fd(), tname) {
            Ok(Some(FileType::Directory)) => return Err((format!("hard link target {target} is a directory"), None)),
            Ok(Some(_)) => {}
            _ => return Err(not_found()),
        }
        let existing = fsops::file_type_at(dir, name).map_err(io_err("inspecting the existing entry"))?;
        self.replace_existing(state, dir, name, existing)
            .map_err(io_err("replacing the existing entry"))?;
        fsops::hard_link(tdir.as_fd(), tname, dir, name).map_err(io_err("creating the hard link"))
    }

    /// Remove what stands at `name` so a new object can take its place.
    fn replace_existing(
        &mut self,
        state: &mut LayerState,
        dir: BorrowedFd<'_>,
        name: &[u8],
        existing: Option<FileType>,
    ) -> io::Result<()> {
        match existing {
            None => Ok(()),
            Some(FileType::Directory) => {
                state.cached_parent = None;
                fsops::remove_all(dir, name)
            }
            Some(_) => fsops::remove_all(dir, name),
        }
    }

    fn apply_root(&mut self, state: &mut LayerState, meta: &TarEntry) -> io::Result<()> {
        if meta.kind != EntryKind::Directory {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the root entry is not a directory",
            ));
        }
        if self.options.chown {
            rustix::fs::fchown(
                &self.root,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )?;
        }
        fsops::fchmod(self.root.as_fd(), meta.mode)?;
        state.dir_times.push((LayerPath::root(), mtime(meta)));
        Ok(())
    }

    /// `.wh.NAME`: remove the lower object; if this layer already made a directory there,
    /// remove only what the lower layers put inside it.
    fn whiteout(&mut self, state: &mut LayerState, target: &LayerPath) -> io::Result<()> {
        let (parent, name) = target.split_last().expect("a whiteout names a child");
        let Ok(dir) = self.lookup_dir(&parent) else {
            return Ok(()); // nothing below to delete
        };
        state.cached_parent = None;
        if !state.rules.touched.contains(target) {
            return fsops::remove_all(dir.as_fd(), name);
        }
        if fsops::file_type_at(dir.as_fd(), name)? == Some(FileType::Directory) {
            let child = fsops::open_dir(dir.as_fd(), name)?;
            self.remove_lower_children(state, child.as_fd(), target)?;
        }
        Ok(())
    }

    /// Remove every child of `dir` that this layer did not create, recursing into the
    /// directories it did create (they may have merged with lower ones).
    fn remove_lower_children(
        &mut self,
        state: &mut LayerState,
        dir: BorrowedFd<'_>,
        dir_path: &LayerPath,
    ) -> io::Result<()> {
        state.cached_parent = None;
        for name in fsops::list_dir(dir)? {
            let child_path = dir_path.join(name.as_bytes());
            if !state.rules.touched.contains(&child_path) {
                fsops::remove_all(dir, name.as_bytes())?;
            } else if fsops::file_type_at(dir, name.as_bytes())? == Some(FileType::Directory) {
                let child = fsops::open_dir(dir, name.as_bytes())?;
                self.remove_lower_children(state, child.as_fd(), &child_path)?;
            }
        }
        Ok(())
    }

    /// Open directory `path`, creating missing components and replacing non-directories
    /// (and lower objects hidden by this layer) on the way.
    fn resolve_dir(&mut self, state: &mut LayerState, path: &LayerPath) -> io::Result<OwnedFd> {
        if let Some((cached, fd)) = &state.cached_parent {
            if cached == path {
                return fd.try_clone();
            }
        }
        let mut fd = self.root.try_clone()?;
        let mut walked = LayerPath::root();
        for component in path.components() {
            walked = walked.join(component);
            if state.rules.hides_lower(&walked) {
                fsops::remove_all(fd.as_fd(), component)?;
            }
            fd = match fsops::open_dir(fd.as_fd(), component) {
                Ok(child) => child,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => {
                    self.make_implicit_dir(state, fd.as_fd(), component, &walked)?
                }
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
                        || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
                {
                    // A symlink or file where a directory must be: replace it, never follow it.
                    fsops::remove_all(fd.as_fd(), component)?;
                    self.make_implicit_dir(state, fd.as_fd(), component, &walked)?
                }
                Err(e) => return Err(e),
            };
        }
        state.cached_parent = Some((path.clone(), fd.try_clone()?));
        Ok(fd)
    }

    fn make_implicit_dir(
        &mut self,
        state: &mut LayerState,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &LayerPath,
    ) -> io::Result<OwnedFd> {
        fsops::mkdir(dir, name)?;
        let fd = fsops::open_dir(dir, name)?;
        if self.options.chown {
            fsops::chown(dir, name, 0, 0)?;
        }
        fsops::fchmod(fd.as_fd(), IMPLICIT_DIR_MODE)?;
        state.rules.touched.insert(path.clone());
        Ok(fd)
    }

    /// Open an existing directory without creating or replacing anything.
    fn lookup_dir(&self, path: &LayerPath) -> io::Result<OwnedFd> {
        let mut fd = self.root.try_clone()?;
        for component in path.components() {
            fd = fsops::open_dir(fd.as_fd(), component)?;
        }
        Ok(fd)
    }

    fn set_owner(&mut self, dir: BorrowedFd<'_>, name: &[u8], meta: &TarEntry) -> io::Result<()> {
        if self.options.chown {
            fsops::chown(dir, name, meta.uid, meta.gid)
        } else {
            self.warn_once(
                "owners",
                "not running as root: file owners from the image are not applied",
            );
            Ok(())
        }
    }

    /// Make the object's xattrs exactly the entry's (a directory that already existed may
    /// carry a lower layer's).
    fn set_xattrs(&mut self, dir: BorrowedFd<'_>, name: &[u8], meta: &TarEntry, clear_old: bool) -> io::Result<()> {
        if clear_old {
            for key in fsops::list_xattrs(dir, name)? {
                if !meta.xattrs.iter().any(|(k, _)| k.as_slice() == key.as_bytes()) {
                    self.tolerate_xattr_error(fsops::remove_xattr(dir, name, &key))?;
                }
            }
        }
        for (key, value) in &meta.xattrs {
            let key = CString::new(key.clone())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name has a NUL byte"))?;
            self.tolerate_xattr_error(fsops::set_xattr(dir, name, &key, value))?;
        }
        Ok(())
    }

    /// xattrs the filesystem or our privileges do not allow are skipped with a warning.
    fn tolerate_xattr_error(&mut self, r: io::Result<()>) -> io::Result<()> {
        match r {
            Err(e)
                if [
                    rustix::io::Errno::PERM,
                    rustix::io::Errno::NOTSUP,
                    rustix::io::Errno::OPNOTSUPP,
                ]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
            {
                self.warn_once(
                    "xattrs",
                    "some xattrs from the image could not be set here and were skipped",
                );
                Ok(())
            }
            r => r,
        }
    }

    fn warn_once(&mut self, key: &'static str, message: &str) {
        if self.warned.insert(key) {
            tracing::warn!("{message}");
        }
    }

    /// Directory mtimes, deepest first, once their children are in place.
    fn finish_dir_times(&mut self, state: &mut LayerState) -> io::Result<()> {
        let mut times = std::mem::take(&mut state.dir_times);
        times.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, t) in times {
            match path.split_last() {
                None => rustix::fs::futimens(
                    &self.root,
                    &rustix::fs::Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                )?,
                Some((parent, name)) => {
                    if let Ok(dir) = self.lookup_dir(&parent) {
                        if fsops::file_type_at(dir.as_fd(), name)? == Some(FileType::Directory) {
                            fsops::set_times(dir.as_fd(), name, t)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn mtime(meta: &TarEntry) -> Timespec {
    Timespec {
        tv_sec: meta.mtime_secs,
        tv_nsec: meta.mtime_nanos as _,
    }
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> (String, Option<io::Error>) {
    move |e| (format!("{what}: {e}"), Some(e))
}

fn tar_error(layer: &str, e: io::Error) -> ApplyError {
    ApplyError {
        layer: layer.to_string(),
        entry: None,
        reason: format!("reading the layer: {e}"),
        source: Some(e),
    }
}

/// Copy exactly `len` bytes (a short source is an error: a truncated layer).
fn copy_limited(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8], len: u64) -> io::Result<u64> {
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file data ends early"));
        }
        to.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(len)
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
