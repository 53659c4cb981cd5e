//! The writable layer's directory on local disk, in the kernel overlayfs upperdir format, so
//! the kernel's overlayfs can mount the same lower + upper and show the same tree:
//!
//! ```text
//! DIR/lamina-upper.json   which image (layer digests) the changes belong to; locked while mounted
//! DIR/upper/              the changes: files, whiteouts (0/0 character devices),
//!                         opaque directories (trusted.overlay.opaque=y),
//!                         renamed lower directories (trusted.overlay.redirect=/old/path)
//! DIR/work/               empty, for the kernel's overlayfs (its workdir must be on the same fs)
//! DIR/tmp/                lamina's copy-ups in progress (renamed into upper/ when complete)
//! ```
//!
//! Every access below `upper/` walks one name at a time from the root with `O_NOFOLLOW`, so a
//! symlink in the upper never leads outside it.

mod mountinfo;

pub use mountinfo::overlay_on;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// Marks a directory whose lower contents are hidden.
pub const OPAQUE: &str = "trusted.overlay.opaque";
/// The lower path a renamed directory came from.
pub const REDIRECT: &str = "trusted.overlay.redirect";
/// xattrs of this prefix belong to overlayfs: never shown through the mount, never set by users.
pub const PRIVATE_PREFIX: &[u8] = b"trusted.overlay.";

const IDENTITY_FILE: &str = "lamina-upper.json";
/// overlayfs' marker of an upper file that holds metadata only (its data is the lower file's).
pub const METACOPY: &str = "trusted.overlay.metacopy";

pub use crate::model::Xattrs;

/// Which image an upper directory's changes belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The image as named when the upper was made (for messages).
    pub image: String,
    /// Digest of its image manifest (what `lamina commit` builds on); absent in uppers made
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The digests of its layers, bottom first: what the changes apply to.
    pub layers: Vec<String>,
    /// Whether metadata-only changes of lower files make metacopy files
    /// (`trusted.overlay.metacopy`), which only kernel overlayfs mounted with `metacopy=on`
    /// reads. Chosen when the upper is made (`--metacopy`, off by default as the kernel's) and
    /// kept for its life; uppers made before the choice was recorded had it on.
    #[serde(default = "metacopy_before_it_was_recorded")]
    pub metacopy: bool,
}

fn metacopy_before_it_was_recorded() -> bool {
    true
}

impl Identity {
    /// The identity recorded in the upper directory `dir`.
    pub fn read(dir: &Path) -> Result<Identity, UpperError> {
        let path = dir.join(IDENTITY_FILE);
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => UpperError::Foreign {
                dir: dir.into(),
                why: format!("holds no {IDENTITY_FILE}: not a lamina upper directory"),
            },
            _ => UpperError::Io(path.clone(), e),
        })?;
        serde_json::from_slice(&text).map_err(|e| UpperError::Foreign {
            dir: dir.into(),
            why: format!("{IDENTITY_FILE} is damaged ({e})"),
        })
    }

    /// Whether `dir` is an upper directory (it holds an identity file).
    pub fn is_upper_dir(dir: &Path) -> bool {
        dir.join(IDENTITY_FILE).is_file()
    }
}

/// Why an upper directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpperError {
    /// Not made by lamina, or made for other layers.
    #[error("{dir}: {why}")]
    Foreign {
        /// The directory.
        dir: PathBuf,
        /// Why it does not fit.
        why: String,
    },
    /// Another mount has it.
    #[error("{0}: in use by another lamina mount")]
    InUse(PathBuf),
    /// Kernel overlayfs has it mounted (a stacked mount whose daemon is gone: unmount it).
    #[error("{0}: in use by the kernel overlayfs mounted at {1} (unmount it first: lamina umount {1})")]
    InUseByOverlay(PathBuf, PathBuf),
    /// Local I/O.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// An open upper directory.
#[derive(Debug)]
pub struct UpperDir {
    dir: PathBuf,
    upper: OwnedFd,
    tmp: OwnedFd,
    /// Held open (with an exclusive flock) while mounted.
    _lock: std::fs::File,
    seq: AtomicU64,
    /// The metacopy choice recorded in the identity file.
    metacopy: bool,
}

fn io_err(p: &Path) -> impl Fn(std::io::Error) -> UpperError + '_ {
    move |e| UpperError::Io(p.to_path_buf(), e)
}

impl UpperDir {
    /// Open (or create) the upper directory `dir` for the image `identity`. A new one's root
    /// takes the lower root's `(mode, uid, gid)`, as the merged root shows the upper's. An
    /// existing one keeps the metacopy choice it was made with ([`UpperDir::metacopy`]).
    pub fn open(dir: &Path, identity: &Identity, root_attrs: (u32, u32, u32)) -> Result<UpperDir, UpperError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let id_path = dir.join(IDENTITY_FILE);
        let fresh = !id_path.exists();
        if fresh {
            let mut names = std::fs::read_dir(dir).map_err(io_err(dir))?;
            if names.next().is_some() {
                return Err(UpperError::Foreign {
                    dir: dir.into(),
                    why: format!("not empty and holds no {IDENTITY_FILE}: not a lamina upper directory"),
                });
            }
            let tmp = dir.join(format!("{IDENTITY_FILE}.partial"));
            let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&serde_json::to_vec_pretty(identity).expect("serializable"))
                .and_then(|()| f.sync_all())
                .map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &id_path).map_err(io_err(&id_path))?;
        }
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .open(&id_path)
            .map_err(io_err(&id_path))?;
        lock_within(&lock, UNMOUNT_GRACE).map_err(|_| UpperError::InUse(dir.into()))?;
        // A kernel overlayfs over this upper outlives a daemon that was killed: the lock is
        // free, the upper is not.
        if let Some(point) = overlay_on(&dir.join("upper")) {
            return Err(UpperError::InUseByOverlay(dir.into(), point));
        }
        let mut text = String::new();
        lock.read_to_string(&mut text).map_err(io_err(&id_path))?;
        let found: Identity = serde_json::from_str(&text).map_err(|e| UpperError::Foreign {
            dir: dir.into(),
            why: format!("{IDENTITY_FILE} is damaged ({e})"),
        })?;
        if found.metacopy != identity.metacopy {
            tracing::warn!(
                dir = %dir.display(),
                "the upper was made {} metacopy; keeping that",
                if found.metacopy { "with" } else { "without" }
            );
        }
        if found.layers != identity.layers {
            return Err(UpperError::Foreign {
                dir: dir.into(),
                why: format!(
                    "holds changes to {} ({} layers), not to {} ({} layers)",
                    found.image,
                    found.layers.len(),
                    identity.image,
                    identity.layers.len()
                ),
            });
        }
        for sub in ["upper", "work", "tmp"] {
            match std::fs::create_dir(dir.join(sub)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(dir)(e)),
                _ => {}
            }
        }
        let open_dir = |sub: &str| {
            let p = dir.join(sub);
            rustix::fs::open(&p, dir_flags(), Mode::empty()).map_err(|e| UpperError::Io(p, e.into()))
        };
        let upper = open_dir("upper")?;
        let tmp_path = dir.join("tmp");
        // Copy-ups a killed daemon left half done: never renamed into upper/, so not part of it.
        for e in std::fs::read_dir(&tmp_path).map_err(io_err(&tmp_path))? {
            let p = e.map_err(io_err(&tmp_path))?.path();
            // A stacked mount's lower that a killed daemon left mounted here (see
            // `mount::stacked`) leaves the tree first, so nothing below is touched; a symlink
            // of that name is not followed.
            if p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"lower-"))
            {
                let flags = rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW;
                let _ = rustix::mount::unmount(&p, flags);
            }
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
        let tmp = open_dir("tmp")?;
        if fresh {
            let (mode, uid, gid) = root_attrs;
            let p = dir.join("upper");
            rustix::fs::fchmod(&upper, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| UpperError::Io(p.clone(), e.into()))?;
            rustix::fs::fchown(
                &upper,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| UpperError::Io(p, e.into()))?;
        }
        Ok(UpperDir {
            dir: dir.into(),
            upper,
            tmp,
            _lock: lock,
            seq: AtomicU64::new(0),
            metacopy: found.metacopy,
        })
    }

    /// Whether metadata-only changes make metacopy files (as recorded when it was made).
    pub fn metacopy(&self) -> bool {
        self.metacopy
    }

    /// The directory given at mount.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The `upper/` directory's root.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.upper.as_fd()
    }

    /// The directory of copy-ups in progress, and a fresh name in it.
    pub fn scratch(&self) -> (BorrowedFd<'_>, String) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        (self.tmp.as_fd(), format!("copy-{}-{n}", std::process::id()))
    }

    /// The upper directory at `path` (names from the root), walked one name at a time without
    /// following symlinks.
    pub fn dir_at(&self, path: &[Vec<u8>]) -> std::io::Result<OwnedFd> {
        let mut fd = rustix::fs::openat(&self.upper, ".", dir_flags(), Mode::empty())?;
        for name in path {
            check_name(name)?;
            fd = rustix::fs::openat(&fd, name.as_slice(), dir_flags(), Mode::empty())?;
        }
        Ok(fd)
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A name the kernel could send is one path component; anything else is refused.
pub fn check_name(name: &[u8]) -> std::io::Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::INVAL.into());
    }
    Ok(())
}

/// `name` in directory `dir`, not followed if it is a symlink; None if there is none.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether an upper entry is a whiteout (a 0/0 character device).
pub fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Put a whiteout at `name` in `dir` (replacing nothing: the name must be free).
pub fn make_whiteout(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<()> {
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)?;
    Ok(())
}

/// The path through which xattrs of `name` in `dir` are reached without following a symlink
/// at the end (the l*xattr calls on /proc/self/fd/N/NAME).
pub fn xattr_path(dir: BorrowedFd<'_>, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if name.is_empty() {
        // The directory itself: through the fd's link, not the link (an l*xattr call would
        // read the /proc link's own xattrs).
        p.push(".");
    } else {
        p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
    }
    p
}

/// One xattr's value; None if it is not set.
pub fn get_xattr(path: &Path, key: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::lgetxattr(path, key, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One xattr's value read from an open file; None if it is not set.
pub fn get_xattr_fd(fd: BorrowedFd<'_>, key: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::fgetxattr(fd, key, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 16, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every xattr of `path` (not followed), with values; overlayfs' own left out.
pub fn xattrs(path: &Path) -> std::io::Result<Xattrs> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for key in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        if key.starts_with(PRIVATE_PREFIX) {
            continue;
        }
        let k = String::from_utf8_lossy(key).into_owned();
        if let Some(v) = get_xattr(path, &k)? {
            out.push((key.to_vec(), v));
        }
    }
    Ok(out)
}

/// Whether the upper directory `dir` (an open fd) is opaque.
pub fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    matches!(get_xattr(&xattr_path(dir, b""), OPAQUE), Ok(Some(v)) if v == b"y")
}

/// Where a renamed upper object's lower is (`trusted.overlay.redirect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `/a/b`: names from the root (lamina writes these).
    Absolute(Vec<Vec<u8>>),
    /// `b`: a name in the parent's lower (kernel overlayfs writes these for a rename within
    /// one directory).
    Relative(Vec<u8>),
}

/// Where the renamed upper directory `dir` (an open fd) came from, if it says.
pub fn redirect_of(dir: BorrowedFd<'_>) -> Option<Redirect> {
    redirect_at(&xattr_path(dir, b""))
}

/// Where the renamed upper object at `path` came from, if it says.
pub fn redirect_at(path: &Path) -> Option<Redirect> {
    let v = get_xattr(path, REDIRECT).ok()??;
    match v.strip_prefix(b"/") {
        Some(rest) => Some(Redirect::Absolute(
            rest.split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        )),
        None if v.is_empty() || v.contains(&b'/') => None,
        None => Some(Redirect::Relative(v)),
    }
}

/// Set an overlayfs marker xattr on `name` in `dir` (a directory).
pub fn set_marker(dir: BorrowedFd<'_>, name: &[u8], key: &str, value: &[u8]) -> std::io::Result<()> {
    rustix::fs::lsetxattr(xattr_path(dir, name), key, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// How long opening an upper directory waits for its lock: `lamina umount` returns once the
/// mount is detached, and the daemon lets go of the upper directory moments later, so
/// `lamina umount M && lamina commit UPPER` must not find it still in use.
const UNMOUNT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Take the exclusive flock of `file`, trying again until `grace` has passed.
fn lock_within(file: &std::fs::File, grace: std::time::Duration) -> rustix::io::Result<()> {
    let until = std::time::Instant::now() + grace;
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn identity(layers: &[&str]) -> Identity {
        Identity {
            image: "img".into(),
            manifest: None,
            layers: layers.iter().map(|s| s.to_string()).collect(),
            metacopy: false,
        }
    }

    #[test]
    fn the_metacopy_choice_is_kept_for_the_uppers_life() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("u");
        // Made without (the default); asked with later: kept without.
        drop(UpperDir::open(&d, &identity(&["a"]), (0o755, 0, 0)).unwrap());
        let with = Identity {
            metacopy: true,
            ..identity(&["a"])
        };
        let u = UpperDir::open(&d, &with, (0o755, 0, 0)).unwrap();
        assert!(!u.metacopy());
        assert!(!Identity::read(&d).unwrap().metacopy);
        drop(u);
        // Made with: kept with.
        let d2 = t.path().join("u2");
        drop(UpperDir::open(&d2, &with, (0o755, 0, 0)).unwrap());
        assert!(UpperDir::open(&d2, &identity(&["a"]), (0o755, 0, 0))
            .unwrap()
            .metacopy());
        // An upper made before the choice was recorded had metacopy on.
        let old: Identity = serde_json::from_str(r#"{"image":"img","layers":["a"]}"#).unwrap();
        assert!(old.metacopy);
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(b".wh.x").is_ok());
    }

    #[test]
    fn foreign_damaged_and_busy_upper_dirs_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("u");
        let u = UpperDir::open(&d, &identity(&["a", "b"]), (0o755, 0, 0)).unwrap();
        assert!(matches!(
            UpperDir::open(&d, &identity(&["a", "b"]), (0o755, 0, 0)),
            Err(UpperError::InUse(_))
        ));
        drop(u);
        // A mount going down lets go of it within the grace: opening waits for that.
        let u = UpperDir::open(&d, &identity(&["a", "b"]), (0o755, 0, 0)).unwrap();
        let opened = std::thread::scope(|s| {
            let other = s.spawn(|| UpperDir::open(&d, &identity(&["a", "b"]), (0o755, 0, 0)).map(drop));
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(u);
            other.join().unwrap()
        });
        assert!(opened.is_ok(), "{opened:?}");
        let e = UpperDir::open(&d, &identity(&["a", "c"]), (0o755, 0, 0)).unwrap_err();
        assert!(e.to_string().contains("holds changes to img"), "{e}");
        std::fs::write(d.join(IDENTITY_FILE), b"{not json").unwrap();
        let e = UpperDir::open(&d, &identity(&["a", "b"]), (0o755, 0, 0)).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        let other = t.path().join("other");
        std::fs::create_dir_all(other.join("stuff")).unwrap();
        let e = UpperDir::open(&other, &identity(&["a"]), (0o755, 0, 0)).unwrap_err();
        assert!(e.to_string().contains("not a lamina upper directory"), "{e}");
    }

    /// Whether we run as root, with the integration tests' rule (tests/it/support): not root
    /// is a failure under CI=true (or 1), otherwise the test is skipped with `why` printed.
    pub(crate) fn require_root(why: &str) -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!in_ci, "{why}, and we are not root; CI=true makes this a failure");
        eprintln!("SKIPPED: {why}");
        false
    }

    #[test]
    fn markers_are_read_from_the_directory_itself() {
        if !require_root("trusted.* xattrs need root") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("u");
        let u = UpperDir::open(&d, &identity(&["a"]), (0o755, 0, 0)).unwrap();
        std::fs::create_dir(d.join("upper/o")).unwrap();
        std::fs::create_dir(d.join("upper/r")).unwrap();
        let root = u.dir_at(&[]).unwrap();
        set_marker(root.as_fd(), b"o", OPAQUE, b"y").unwrap();
        set_marker(root.as_fd(), b"r", REDIRECT, b"/x/y").unwrap();
        std::fs::create_dir(d.join("upper/s")).unwrap();
        set_marker(root.as_fd(), b"s", REDIRECT, b"old").unwrap();
        let o = u.dir_at(&[b"o".to_vec()]).unwrap();
        let r = u.dir_at(&[b"r".to_vec()]).unwrap();
        let s = u.dir_at(&[b"s".to_vec()]).unwrap();
        assert!(is_opaque(o.as_fd()) && !is_opaque(r.as_fd()));
        assert_eq!(
            redirect_of(r.as_fd()),
            Some(Redirect::Absolute(vec![b"x".to_vec(), b"y".to_vec()]))
        );
        assert_eq!(redirect_of(s.as_fd()), Some(Redirect::Relative(b"old".to_vec())));
        assert_eq!(redirect_of(o.as_fd()), None);
    }

    #[test]
    fn walks_never_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("u");
        let u = UpperDir::open(&d, &identity(&["a"]), (0o755, 0, 0)).unwrap();
        std::fs::create_dir(d.join("upper/real")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("upper/link")).unwrap();
        assert!(u.dir_at(&[b"real".to_vec()]).is_ok());
        assert!(u.dir_at(&[b"link".to_vec()]).is_err());
        assert!(u.dir_at(&[b"..".to_vec()]).is_err());
    }
}
