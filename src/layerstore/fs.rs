//! The store's FUSE filesystem: the directories containers/storage looks up, made when it
//! looks them up, and each layer's `diff` served from its [`ImageView`].
//!
//! ```text
//! /                                   root (lists the references looked up so far)
//! /<base64 ref>/                      a reference: made on lookup if the name decodes
//! /<base64 ref>/<digest>/             a layer: resolved on lookup (ENOENT / EIO if not)
//!                       diff/         the layer's files, overlayfs form
//!                       info          containers/storage's Layer JSON
//!                       blob          the compressed layer, read from the registry on demand
//!                       use           create(2) counts a use and fails ENOENT (the protocol)
//! rmdir /<base64 ref>/<digest>        counts a release and fails ENOENT (the protocol)
//! ```
//!
//! Inode numbers: the fixed directories and files are numbered from 1 below 2^32; layer `s`
//! (from 0) numbers its `diff` tree `(s + 1) << 32 | inode in its view`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::digest::Digest;
use crate::fetch::Fetcher;
use crate::reference::ImageRef;
use crate::view::{errno, reply_sized, BLOCK_SIZE, TTL};

use super::layer::{decode_reference, open, LookupError, Settings, StoreLayer};

const ROOT: u64 = 1;
const SHIFT: u32 = 32;
/// Smallest blob read sent to the registry (podman reads a blob front to back).
const BLOB_WINDOW: u64 = 4 << 20;
/// Lookups that may ask registries at once (of 8 FUSE threads).
const MAX_RESOLVING: usize = 4;
/// How long a failed lookup is answered from memory.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// How long the kernel keeps the fixed entries (they never change once made).
const FIXED_TTL: Duration = Duration::from_secs(3600);

enum Fixed {
    Root,
    Reference {
        image: ImageRef,
        layers: BTreeMap<Vec<u8>, u64>,
    },
    Layer {
        slot: usize,
    },
    Info {
        slot: usize,
    },
    Blob {
        slot: usize,
    },
}

struct Slot {
    layer: StoreLayer,
    dir: u64,
    uses: i64,
    /// The last window of the blob read.
    window: Option<(u64, bytes::Bytes)>,
}

#[derive(Default)]
struct Tables {
    /// Inode `i + 1` is `fixed[i]`, with its parent's inode and name.
    fixed: Vec<(Fixed, u64, Vec<u8>)>,
    /// References by directory name.
    references: BTreeMap<Vec<u8>, u64>,
    slots: Vec<Slot>,
}

/// A layer lookup: the reference directory's inode and the name looked up.
type LookupKey = (u64, Vec<u8>);

/// The store mounted.
pub struct StoreFs {
    /// Lookups asking registries at once: the rest of the FUSE threads stay free for reads.
    resolving: Arc<tokio::sync::Semaphore>,
    /// Lookups that failed lately, answered from memory until the time given.
    refused: parking_lot::Mutex<std::collections::HashMap<LookupKey, (std::time::Instant, fuser::Errno)>>,
    settings: Settings,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    tables: parking_lot::Mutex<Tables>,
    started: SystemTime,
}

impl StoreFs {
    /// A store with nothing looked up yet.
    pub fn new(settings: Settings, fetcher: Arc<Fetcher>, runtime: tokio::runtime::Handle) -> StoreFs {
        let tables = Tables {
            fixed: vec![(Fixed::Root, ROOT, Vec::new())],
            ..Tables::default()
        };
        StoreFs {
            resolving: Arc::new(tokio::sync::Semaphore::new(MAX_RESOLVING)),
            refused: Default::default(),
            settings,
            fetcher,
            runtime,
            tables: parking_lot::Mutex::new(tables),
            started: SystemTime::now(),
        }
    }

    /// The fetcher (for stats).
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    fn fixed_attr(&self, ino: u64, t: &Tables) -> Option<FileAttr> {
        let (f, _, _) = t.fixed.get((ino as usize).checked_sub(1)?)?;
        let (kind, size, perm) = match f {
            Fixed::Root | Fixed::Reference { .. } | Fixed::Layer { .. } => {
                (FileType::Directory, BLOCK_SIZE as u64, 0o755)
            }
            Fixed::Info { slot } => (FileType::RegularFile, t.slots[*slot].layer.info.len() as u64, 0o444),
            Fixed::Blob { slot } => (FileType::RegularFile, t.slots[*slot].layer.blob_size, 0o444),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        })
    }

    /// Which layer's `diff` an inode is in, and its inode there.
    fn in_diff(&self, ino: u64) -> Option<(Arc<crate::view::ImageView>, u64, u64)> {
        let slot = (ino >> SHIFT).checked_sub(1)? as usize;
        let t = self.tables.lock();
        let s = t.slots.get(slot)?;
        Some((
            s.layer.view.clone(),
            ino & ((1 << SHIFT) - 1),
            ((slot as u64) + 1) << SHIFT,
        ))
    }

    fn add_fixed(t: &mut Tables, f: Fixed, parent: u64, name: &[u8]) -> u64 {
        t.fixed.push((f, parent, name.to_vec()));
        t.fixed.len() as u64
    }

    /// Look up (and on first sight, resolve) layer `name` of reference directory `parent`.
    fn lookup_layer(&self, parent: u64, name: &[u8]) -> Result<u64, fuser::Errno> {
        let image = {
            let t = self.tables.lock();
            match t.fixed.get(parent as usize - 1) {
                Some((Fixed::Reference { image, layers }, _, _)) => {
                    if let Some(ino) = layers.get(name) {
                        return Ok(*ino);
                    }
                    image.clone()
                }
                _ => return Err(fuser::Errno::ENOENT),
            }
        };
        let digest: Digest = std::str::from_utf8(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(fuser::Errno::ENOENT)?;
        let key = (parent, name.to_vec());
        if let Some((until, e)) = self.refused.lock().get(&key) {
            if std::time::Instant::now() < *until {
                return Err(*e);
            }
        }
        let opened = self.runtime.block_on(async {
            let _permit = self.resolving.acquire().await;
            open(&image, &digest, &self.settings, &self.fetcher).await
        });
        let refuse = |e: fuser::Errno| {
            self.refused
                .lock()
                .insert(key.clone(), (std::time::Instant::now() + REFUSED_FOR, e));
            e
        };
        let layer = match opened {
            Ok(l) => l,
            Err(LookupError::Absent(why)) => {
                tracing::info!(image = %image, layer = %digest, reason = %why, "layer not offered");
                return Err(refuse(fuser::Errno::ENOENT));
            }
            Err(LookupError::Unavailable(why)) => {
                tracing::warn!(image = %image, layer = %digest, reason = %why, "layer lookup failed");
                return Err(refuse(fuser::Errno::EIO));
            }
        };
        let mut t = self.tables.lock();
        if let Some((Fixed::Reference { layers, .. }, _, _)) = t.fixed.get(parent as usize - 1) {
            if let Some(ino) = layers.get(name) {
                return Ok(*ino); // another lookup made it meanwhile
            }
        }
        let slot = t.slots.len();
        let dir = Self::add_fixed(&mut t, Fixed::Layer { slot }, parent, name);
        Self::add_fixed(&mut t, Fixed::Info { slot }, dir, b"info");
        Self::add_fixed(&mut t, Fixed::Blob { slot }, dir, b"blob");
        t.slots.push(Slot {
            layer,
            dir,
            uses: 0,
            window: None,
        });
        if let Some((Fixed::Reference { layers, .. }, _, _)) = t.fixed.get_mut(parent as usize - 1) {
            layers.insert(name.to_vec(), dir);
        }
        tracing::info!(image = %image, layer = %digest, "layer offered");
        Ok(dir)
    }

    fn child_of_fixed(&self, parent: u64, name: &[u8]) -> Result<u64, fuser::Errno> {
        enum Next {
            Reference,
            Layer,
            In(Vec<(Vec<u8>, u64)>),
        }
        let next = {
            let t = self.tables.lock();
            match t.fixed.get((parent as usize).wrapping_sub(1)) {
                Some((Fixed::Root, _, _)) => match t.references.get(name) {
                    Some(ino) => return Ok(*ino),
                    None => Next::Reference,
                },
                Some((Fixed::Reference { .. }, _, _)) => Next::Layer,
                Some((Fixed::Layer { slot }, _, _)) => {
                    let diff = ((*slot as u64) + 1) << SHIFT | crate::union::ROOT_INO;
                    Next::In(vec![
                        (b"diff".to_vec(), diff),
                        (b"info".to_vec(), parent + 1),
                        (b"blob".to_vec(), parent + 2),
                    ])
                }
                Some(_) => return Err(fuser::Errno::ENOTDIR),
                None => return Err(fuser::Errno::ENOENT),
            }
        };
        match next {
            Next::Reference => {
                let image = decode_reference(name).ok_or(fuser::Errno::ENOENT)?;
                let mut t = self.tables.lock();
                if let Some(ino) = t.references.get(name) {
                    return Ok(*ino);
                }
                let ino = Self::add_fixed(
                    &mut t,
                    Fixed::Reference {
                        image,
                        layers: BTreeMap::new(),
                    },
                    ROOT,
                    name,
                );
                t.references.insert(name.to_vec(), ino);
                Ok(ino)
            }
            Next::Layer => self.lookup_layer(parent, name),
            Next::In(children) => children
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, ino)| ino)
                .ok_or(fuser::Errno::ENOENT),
        }
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, fuser::Errno> {
        if let Some((view, inner, base)) = self.in_diff(ino) {
            let mut attr = view.getattr(inner).map_err(|e| errno(&e))?;
            attr.ino = INodeNo(base | attr.ino.0);
            return Ok(attr);
        }
        let t = self.tables.lock();
        self.fixed_attr(ino, &t).ok_or(fuser::Errno::ENOENT)
    }

    fn read_blob(&self, slot: usize, offset: u64, size: u32) -> Result<Vec<u8>, fuser::Errno> {
        let (source, blob_size, cached) = {
            let t = self.tables.lock();
            let s = &t.slots[slot];
            (s.layer.source.clone(), s.layer.blob_size, s.window.clone())
        };
        let end = (offset + size as u64).min(blob_size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if let Some((start, bytes)) = &cached {
            if offset >= *start && end <= start + bytes.len() as u64 {
                return Ok(bytes[(offset - start) as usize..(end - start) as usize].to_vec());
            }
        }
        let len = (end - offset).max(BLOB_WINDOW).min(blob_size - offset);
        let fetched = self
            .runtime
            .block_on(async {
                tokio::time::timeout(
                    self.settings.fetch_timeout,
                    source.registry.blob_range(&source.repo, &source.digest, offset, len),
                )
                .await
            })
            .map_err(|_| fuser::Errno::EIO)?
            .map_err(|e| {
                tracing::warn!(blob = %source.digest, error = %e, "blob read failed");
                fuser::Errno::EIO
            })?;
        let out = fetched[..((end - offset) as usize).min(fetched.len())].to_vec();
        self.tables.lock().slots[slot].window = Some((offset, fetched));
        Ok(out)
    }
}

impl Filesystem for StoreFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        if let Some((view, inner, base)) = self.in_diff(parent.0) {
            return match view.lookup(INodeNo(inner), OsStr::from_bytes(name)) {
                Ok(mut attr) => {
                    attr.ino = INodeNo(base | attr.ino.0);
                    reply.entry(&TTL, &attr, Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            };
        }
        match self.child_of_fixed(parent.0, name).and_then(|ino| self.attr_of(ino)) {
            Ok(attr) => reply.entry(&FIXED_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&FIXED_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.in_diff(ino.0) {
            Some((view, inner, _)) => match view.link(inner) {
                Ok(link) => reply.data(&link),
                Err(e) => reply.error(errno(&e)),
            },
            None => reply.error(fuser::Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & 0o3 != 0 || flags.0 & 0o1000 != 0 {
            return reply.error(fuser::Errno::EROFS);
        }
        match self.attr_of(ino.0) {
            Ok(a) if a.kind == FileType::RegularFile => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.error(fuser::Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some((view, inner, _)) = self.in_diff(ino.0) {
            return match view.read(INodeNo(inner), offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let which = {
            let t = self.tables.lock();
            match t.fixed.get((ino.0 as usize).wrapping_sub(1)) {
                Some((Fixed::Info { slot }, _, _)) => {
                    let info = &t.slots[*slot].layer.info;
                    let start = (offset as usize).min(info.len());
                    let end = (start + size as usize).min(info.len());
                    return reply.data(&info[start..end]);
                }
                Some((Fixed::Blob { slot }, _, _)) => *slot,
                _ => return reply.error(fuser::Errno::EISDIR),
            }
        };
        match self.read_blob(which, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.attr_of(ino.0) {
            Ok(a) if a.kind == FileType::Directory => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(fuser::Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if let Some((view, inner, base)) = self.in_diff(ino.0) {
            let layer_dir = self.tables.lock().slots[((base >> SHIFT) - 1) as usize].dir;
            let listed = view.list(INodeNo(inner), offset, |u, child, next, name| {
                // `..` of the diff root is the layer's directory.
                let ino = if name == b".." && inner == crate::union::ROOT_INO {
                    layer_dir
                } else {
                    base | child
                };
                reply.add(
                    INodeNo(ino),
                    next,
                    crate::view::file_type(u.node(child).kind),
                    OsStr::from_bytes(name),
                )
            });
            return match listed {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let entries: Vec<(u64, FileType, Vec<u8>)> = {
            let t = self.tables.lock();
            let Some((f, parent, _)) = t.fixed.get((ino.0 as usize).wrapping_sub(1)) else {
                return reply.error(fuser::Errno::ENOENT);
            };
            let mut v = vec![
                (ino.0, FileType::Directory, b".".to_vec()),
                (*parent, FileType::Directory, b"..".to_vec()),
            ];
            match f {
                Fixed::Root => v.extend(t.references.iter().map(|(n, i)| (*i, FileType::Directory, n.clone()))),
                Fixed::Reference { layers, .. } => {
                    v.extend(layers.iter().map(|(n, i)| (*i, FileType::Directory, n.clone())))
                }
                Fixed::Layer { slot } => v.extend([
                    (((*slot as u64) + 1) << SHIFT | 1, FileType::Directory, b"diff".to_vec()),
                    (ino.0 + 1, FileType::RegularFile, b"info".to_vec()),
                    (ino.0 + 2, FileType::RegularFile, b"blob".to_vec()),
                ]),
                _ => return reply.error(fuser::Errno::ENOTDIR),
            }
            v
        };
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.in_diff(ino.0) {
            Some((view, inner, _)) => {
                reply_sized(reply, size, view.getxattr(INodeNo(inner), name).map_err(|e| errno(&e)))
            }
            None => reply.error(fuser::Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.in_diff(ino.0) {
            Some((view, inner, _)) => reply_sized(reply, size, view.listxattr(INodeNo(inner)).map_err(|e| errno(&e))),
            None => reply_sized(reply, size, Ok(Vec::new())),
        }
    }

    /// `create(<layer>/use)`: containers/storage says it uses the layer; the answer is ENOENT
    /// (a store that counts uses answers so; success would mean it does not).
    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(self.count_use(parent.0, name.as_bytes()));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.count_use(parent.0, name.as_bytes()));
    }

    /// `rmdir(<ref>/<digest>)`: containers/storage releases the layer; ENOENT, as for `use`.
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.in_diff(parent.0).is_some() {
            return reply.error(fuser::Errno::EROFS);
        }
        let mut t = self.tables.lock();
        let dir = match t.fixed.get((parent.0 as usize).wrapping_sub(1)) {
            Some((Fixed::Reference { layers, .. }, _, _)) => layers.get(name.as_bytes()).copied(),
            _ => None,
        };
        if let Some(slot) = t.slots.iter_mut().find(|s| Some(s.dir) == dir) {
            slot.uses -= 1;
            tracing::debug!(uses = slot.uses, "layer released");
            return reply.error(fuser::Errno::ENOENT);
        }
        reply.error(fuser::Errno::ENOENT)
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(fuser::Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fuser::Errno::EROFS);
    }
}

impl StoreFs {
    fn count_use(&self, parent: u64, name: &[u8]) -> fuser::Errno {
        if name != b"use" {
            return fuser::Errno::EROFS;
        }
        let mut t = self.tables.lock();
        match t.slots.iter_mut().find(|s| s.dir == parent) {
            Some(s) => {
                s.uses += 1;
                tracing::debug!(uses = s.uses, "layer in use");
                fuser::Errno::ENOENT
            }
            None => fuser::Errno::EROFS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_inodes_never_meet_fixed_ones() {
        let base = 1u64 << SHIFT;
        assert!(base > u32::MAX as u64);
        assert_eq!((base | 7) >> SHIFT, 1);
        assert_eq!((base | 7) & ((1 << SHIFT) - 1), 7);
    }
}
