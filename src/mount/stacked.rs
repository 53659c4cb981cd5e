//! The writable mount as kernel overlayfs stacked on lamina's read-only view, as containerd's
//! stargz snapshotter stacks its lazy layers: the lower is the image served through FUSE (lazy
//! reads, the shared chunk cache), the upper is lamina's upper directory (already in overlayfs'
//! format). Writes, creates and metadata changes never cross FUSE; only reads of lower files
//! and copy-ups do.
//!
//! ```text
//! DIR/tmp/lower-PID  ◄── FUSE: ImageFs (read-only), mounted for a moment
//! TARGET             ◄── overlay  lowerdir=DIR/tmp/lower-PID, upperdir=DIR/upper, workdir=DIR/work,
//!                                 redirect_dir=on, index=off [, metacopy=on]
//! then DIR/tmp/lower-PID is detached and removed: overlayfs holds its own private clone of
//! the lower mount, so only TARGET is left in the tree. Unmounting TARGET releases that clone,
//! the FUSE connection ends, and the daemon's session with it (as for a read-only mount).
//! ```
//!
//! The options are those lamina's own overlay ([`crate::overlay`]) follows, so either can
//! mount the same upper directory. Kernel overlayfs needs `CAP_SYS_ADMIN`; without it the
//! writable mount is lamina's own ([`Backend::Auto`]).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

use crate::upper::UpperDir;

/// How a writable mount is served (`lamina mount --overlay`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Kernel overlayfs when lamina runs as root, else lamina's own.
    #[default]
    Auto,
    /// Kernel overlayfs over the read-only FUSE view.
    Kernel,
    /// lamina's own overlay, every operation through FUSE (no privilege needed).
    Fuse,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "kernel" => Ok(Backend::Kernel),
            "fuse" => Ok(Backend::Fuse),
            _ => Err(format!("{s:?}: expected auto, kernel or fuse")),
        }
    }
}

impl Backend {
    /// Whether to try kernel overlayfs.
    pub fn tries_kernel(self) -> bool {
        match self {
            Backend::Auto => rustix::process::geteuid().is_root(),
            Backend::Kernel => true,
            Backend::Fuse => false,
        }
    }
}

/// Where the read-only view is mounted for the moment overlayfs takes it.
pub fn lower_point(upper: &UpperDir) -> PathBuf {
    upper.path().join("tmp").join(format!("lower-{}", std::process::id()))
}

/// Mount kernel overlayfs at `target` over the read-only view mounted at `lower`, with the
/// upper directory `upper`. Then `lower` leaves the tree whatever happened (the overlay keeps
/// its own clone of it) and is removed. On failure the error carries the kernel's own words.
pub fn mount_over(lower: &Path, upper: &UpperDir, target: &Path) -> Result<(), String> {
    let result = mount_overlay(lower, upper, target);
    let _ = rustix::mount::unmount(lower, UnmountFlags::DETACH);
    let _ = std::fs::remove_dir(lower);
    result.map_err(|e| format!("kernel overlayfs at {}: {e}", target.display()))
}

/// The overlay's options, in the order they are given.
fn options(lower: &Path, upper: &UpperDir) -> Vec<(&'static str, String)> {
    let mut o = vec![
        ("source", "lamina".to_string()),
        ("lowerdir", escape(lower)),
        ("upperdir", escape(&upper.path().join("upper"))),
        ("workdir", escape(&upper.path().join("work"))),
        ("redirect_dir", "on".to_string()),
        ("index", "off".to_string()),
    ];
    if upper.metacopy() {
        o.push(("metacopy", "on".to_string()));
    }
    o
}

/// overlayfs takes `\` as an escape, `:` between lower layers and `,` between options.
fn escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn mount_overlay(lower: &Path, upper: &UpperDir, target: &Path) -> Result<(), String> {
    if upper.path().to_str().is_none() || lower.to_str().is_none() {
        return Err(format!("{} is not UTF-8", upper.path().display()));
    }
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        // Before Linux 5.2: the old mount(2), whose reasons go to the kernel log only.
        Err(Errno::NOSYS) => return legacy_mount(lower, upper, target),
        Err(e) => return Err(format!("fsopen: {e}")),
    };
    let said = |e: Errno| {
        let words = kernel_messages(fs.as_fd());
        if words.is_empty() {
            e.to_string()
        } else {
            format!("{e} ({words})")
        }
    };
    for (key, value) in options(lower, upper) {
        match rustix::mount::fsconfig_set_string(fs.as_fd(), key, value.as_str()) {
            Ok(()) => {}
            // Before Linux 6.5 overlayfs takes options through the legacy context, which
            // refuses a comma in a value even escaped; mount(2) takes it escaped.
            Err(Errno::INVAL) if value.contains(',') => return legacy_mount(lower, upper, target),
            Err(e) => return Err(format!("{key}={value}: {}", said(e))),
        }
    }
    rustix::mount::fsconfig_create(fs.as_fd()).map_err(said)?;
    let mnt =
        rustix::mount::fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).map_err(said)?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| e.to_string())
}

/// What the kernel said about a failed step of the new mount API ("e overlay: …" lines).
fn kernel_messages(fs: BorrowedFd<'_>) -> String {
    let mut words = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        words.push(line.get(2..).unwrap_or_default().trim().to_string());
    }
    words.join("; ")
}

fn legacy_mount(lower: &Path, upper: &UpperDir, target: &Path) -> Result<(), String> {
    let data: Vec<String> = options(lower, upper)
        .into_iter()
        .filter(|(k, _)| *k != "source")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let data = std::ffi::CString::new(data.join(",")).map_err(|_| "a path holds a NUL byte".to_string())?;
    rustix::mount::mount(
        "lamina",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| format!("mount(2): {e} (the kernel log says why)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_escapes_in_paths_are_escaped() {
        assert_eq!(escape(Path::new("/a:b,c\\d/e")), "/a\\:b\\,c\\\\d/e");
        assert_eq!(escape(Path::new("/plain/path")), "/plain/path");
    }

    #[test]
    fn backends_parse_from_their_names() {
        assert_eq!("kernel".parse::<Backend>(), Ok(Backend::Kernel));
        assert_eq!("fuse".parse::<Backend>(), Ok(Backend::Fuse));
        assert_eq!("auto".parse::<Backend>(), Ok(Backend::Auto));
        assert!("overlay".parse::<Backend>().unwrap_err().contains("expected auto"));
    }
}
