//! Directory-relative file operations that never follow a symlink: every call names a parent
//! directory by an open descriptor and one plain name inside it, so nothing the layer creates
//! can send a write or a read outside the tree.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};

/// Open `name` in `dir` as a directory; a symlink or a non-directory fails (ELOOP / ENOTDIR).
pub fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Open the root of the tree.
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// The type of `name` in `dir` (not following symlinks), or `None` if it does not exist.
pub fn file_type_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove `name` from `dir`, with everything below it if it is a directory. Missing is fine.
pub fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match file_type_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let child = open_dir(dir, name)?;
            for entry in list_dir(child.as_fd())? {
                remove_all(child.as_fd(), entry.as_bytes())?;
            }
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// The names in a directory, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // Dir::read_from dups the descriptor, so `dir` stays usable and its offset untouched.
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Create a directory; the mode is set exactly later, so no umask matters.
pub fn mkdir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?)
}

/// Create a new regular file for writing (it must not exist).
pub fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
    Ok(std::fs::File::from(fd))
}

/// Create a symlink `name` → `target` (the target is stored, never followed).
pub fn symlink(dir: BorrowedFd<'_>, name: &[u8], target: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// Create a hard link `dir/name` to `target_dir/target_name` (a symlink target is linked itself).
pub fn hard_link(target_dir: BorrowedFd<'_>, target_name: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        target_dir,
        target_name,
        dir,
        name,
        AtFlags::empty(),
    )?)
}

/// Create a device node or fifo.
pub fn mknod(dir: BorrowedFd<'_>, name: &[u8], kind: FileType, major: u32, minor: u32) -> io::Result<()> {
    let dev = rustix::fs::makedev(major, minor);
    Ok(rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), dev)?)
}

/// Set owner without following a symlink.
pub fn chown(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
    Ok(rustix::fs::chownat(
        dir,
        name,
        Some(uid),
        Some(gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Set permission bits (including setuid, setgid, sticky) on an open file or directory.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?)
}

/// Set permission bits on a name that is not a symlink (devices, fifos).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )?)
}

/// Set access and modification times without following a symlink.
pub fn set_times(dir: BorrowedFd<'_>, name: &[u8], mtime: Timespec) -> io::Result<()> {
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    Ok(rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The path through `/proc/self/fd` that names `name` inside the open directory `dir`: the
/// magic link resolves to the directory itself, and `name` is the last component, so an
/// `l*xattr` call on it acts on `name` without following it.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<CString> {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    CString::new(p).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Names of the xattrs set on `name` in `dir` (not following symlinks).
pub fn list_xattrs(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<CString>> {
    let path = proc_path(dir, name)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path.as_c_str(), &mut buf)?;
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| CString::new(s).ok())
        .collect())
}

/// Set one xattr on `name` in `dir` (not following symlinks).
pub fn set_xattr(dir: BorrowedFd<'_>, name: &[u8], key: &CStr, value: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name)?;
    Ok(rustix::fs::lsetxattr(path.as_c_str(), key, value, XattrFlags::empty())?)
}

/// Remove one xattr from `name` in `dir` (not following symlinks).
pub fn remove_xattr(dir: BorrowedFd<'_>, name: &[u8], key: &CStr) -> io::Result<()> {
    let path = proc_path(dir, name)?;
    Ok(rustix::fs::lremovexattr(path.as_c_str(), key)?)
}
