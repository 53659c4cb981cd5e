//! `lamina run`: start an image's program in a mounted root.
//!
//! ```text
//! image config (Entrypoint, Cmd, Env, WorkingDir, User) + the image's /etc/passwd, /etc/group
//!   ──► Spec (argv, env, cwd, uid, gid, groups)
//! --runtime chroot:  thread: unshare(NEWPID) ──► fork ──► child (PID 1 of the new namespace):
//!     unshare(NEWNS | NEWUTS), mounts private, hostname, /proc and /dev inside the root,
//!     chroot, chdir, setgroups/setgid/setuid, exec (PATH searched inside the root)
//! --runtime crun|runc: Spec ──► bundle config.json (root = the mount) ──► `crun run`
//! ```
//!
//! The image's files are read through an `openat2(RESOLVE_IN_ROOT)` descriptor, so a symlinked
//! /etc/passwd resolves inside the image, never on the host.

pub mod bundle;

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use oci_spec::image::ImageConfiguration;
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// PATH when the image sets none (as Docker and Podman use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest /etc/passwd or /etc/group read.
const MAX_ID_FILE: u64 = 4 << 20;

/// What to start and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Host name in the new UTS namespace.
    pub hostname: String,
}

/// The image cannot be started as asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// A line of /etc/passwd: (name, uid, gid, home).
type PasswdEntry = (String, u32, u32, String);
/// A line of /etc/group: (name, gid, members).
type GroupEntry = (String, u32, Vec<String>);

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some((
                f[0].to_string(),
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                f[5].to_string(),
            ))
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// A file of the image, resolved inside `root` (symlinks too); empty when it is missing.
fn read_in_root(root: BorrowedFd<'_>, path: &str) -> Result<String, SpecError> {
    let fd = match rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
        Err(e) => return Err(SpecError(format!("reading /{path} of the image: {e}"))),
    };
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_ID_FILE)
        .read_to_string(&mut text)
        .map_err(|e| SpecError(format!("reading /{path} of the image: {e}")))?;
    Ok(text)
}

/// The spec for `config`'s program (or `command`, which replaces the image's Cmd), with the
/// image root `root` (for user and group names).
pub fn spec(config: &ImageConfiguration, command: &[String], root: &Path, hostname: &str) -> Result<Spec, SpecError> {
    let c = config.config().clone().unwrap_or_default();
    let mut argv: Vec<String> = c.entrypoint().clone().unwrap_or_default();
    if command.is_empty() {
        argv.extend(c.cmd().clone().unwrap_or_default());
    } else {
        argv.extend(command.iter().cloned());
    }
    if argv.is_empty() {
        return Err(SpecError(
            "the image has no Entrypoint or Cmd: give the command after --".into(),
        ));
    }
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SpecError(format!("{}: {e}", root.display())))?;
    let user = c.user().clone().unwrap_or_default();
    let (uid, gid, groups, home) = resolve_user(&user, root_fd.as_fd())?;
    let mut env: Vec<String> = c.env().clone().unwrap_or_default();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split_once('=').is_some_and(|(n, _)| n == k));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    let cwd = c
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError(format!("WorkingDir {cwd:?} is not absolute")));
    }
    Ok(Spec {
        argv,
        env,
        cwd,
        uid,
        gid,
        groups,
        hostname: hostname.to_string(),
    })
}

/// `user[:group]` (names or numbers) against the image's /etc/passwd and /etc/group:
/// (uid, gid, supplementary groups, home).
fn resolve_user(user: &str, root: BorrowedFd<'_>) -> Result<(u32, u32, Vec<u32>, String), SpecError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = parse_passwd(&read_in_root(root, "etc/passwd")?);
    let groups = parse_group(&read_in_root(root, "etc/group")?);
    let (uid, mut gid, home, name) = if u.is_empty() {
        let e = passwd.iter().find(|p| p.1 == 0);
        (
            0,
            0,
            e.map_or("/root".to_string(), |e| e.3.clone()),
            e.map(|e| e.0.clone()),
        )
    } else if let Ok(n) = u.parse::<u32>() {
        match passwd.iter().find(|p| p.1 == n) {
            Some(e) => (n, e.2, e.3.clone(), Some(e.0.clone())),
            None => (n, 0, "/".to_string(), None),
        }
    } else {
        let e = passwd
            .iter()
            .find(|p| p.0 == u)
            .ok_or_else(|| SpecError(format!("user {u:?} is not in the image's /etc/passwd")))?;
        (e.1, e.2, e.3.clone(), Some(e.0.clone()))
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                groups
                    .iter()
                    .find(|e| e.0 == g)
                    .ok_or_else(|| SpecError(format!("group {g:?} is not in the image's /etc/group")))?
                    .1
            }
        };
    }
    let mut extra: Vec<u32> = match &name {
        Some(n) if g.is_none() => groups.iter().filter(|e| e.2.contains(n)).map(|e| e.1).collect(),
        _ => Vec::new(),
    };
    extra.retain(|x| *x != gid);
    extra.sort_unstable();
    extra.dedup();
    Ok((uid, gid, extra, if home.is_empty() { "/".into() } else { home }))
}

fn cstring(s: impl Into<Vec<u8>>, what: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::other(format!("{what} holds a NUL byte")))
}

/// Start `spec` chrooted into `root` in new mount, PID and UTS namespaces and wait for it.
/// Needs root. The program is PID 1 of its namespace; when it ends, so does everything it
/// started.
pub fn run_chroot(root: &Path, spec: &Spec) -> std::io::Result<std::process::ExitStatus> {
    spawn_chroot(root, spec, Stdio::inherit(), Stdio::inherit(), false)?.wait()
}

/// Start `spec` as [`run_chroot`] does, with `stdout` and `stderr` as given, without
/// waiting: killing the child, the PID namespace's init, ends everything it started
/// (`lamina bench`). `detached`: no stdin, and a process group of its own (the terminal's
/// Ctrl-C goes to the caller, which stops it).
#[allow(unsafe_code)] // pre_exec and unshare: see the SAFETY notes
pub fn spawn_chroot(
    root: &Path,
    spec: &Spec,
    stdout: Stdio,
    stderr: Stdio,
    detached: bool,
) -> std::io::Result<std::process::Child> {
    use std::os::unix::ffi::OsStrExt;
    let root_c = cstring(root.as_os_str().as_bytes(), "the root path")?;
    let proc_c = cstring(root.join("proc").as_os_str().as_bytes(), "the root path")?;
    let dev_c = cstring(root.join("dev").as_os_str().as_bytes(), "the root path")?;
    let cwd_c = cstring(spec.cwd.as_bytes(), "WorkingDir")?;
    let has_proc = root.join("proc").is_dir();
    let has_dev = root.join("dev").is_dir();
    let hostname = spec.hostname.clone().into_bytes();
    let (uid, gid) = (
        rustix::process::Uid::from_raw(spec.uid),
        rustix::process::Gid::from_raw(spec.gid),
    );
    let groups: Vec<rustix::process::Gid> = spec.groups.iter().map(|g| rustix::process::Gid::from_raw(*g)).collect();
    let mut cmd = std::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]).env_clear().stdout(stdout).stderr(stderr);
    if detached {
        use std::os::unix::process::CommandExt as _;
        cmd.stdin(Stdio::null()).process_group(0);
    }
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // on data prepared above (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            use rustix::mount::{MountFlags, MountPropagationFlags};
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS | rustix::thread::UnshareFlags::NEWUTS)?;
            rustix::mount::mount_change(c"/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
            rustix::system::sethostname(&hostname)?;
            if has_proc {
                rustix::mount::mount(
                    c"proc",
                    proc_c.as_c_str(),
                    c"proc",
                    MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                    None,
                )?;
            }
            if has_dev {
                rustix::mount::mount_bind_recursive(c"/dev", dev_c.as_c_str())?;
            }
            rustix::process::chroot(root_c.as_c_str())?;
            rustix::process::chdir(cwd_c.as_c_str())?;
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_gid(gid)?;
            rustix::thread::set_thread_uid(uid)?;
            Ok(())
        });
    }
    // A PID namespace applies to the children of the thread that made it: make it on a
    // thread of its own, which starts the program and waits.
    std::thread::spawn(move || -> std::io::Result<std::process::Child> {
        // SAFETY: only this thread's namespace for new children changes.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID)? };
        cmd.spawn()
    })
    .join()
    .map_err(|_| std::io::Error::other("the runner thread panicked"))?
}

/// Start `spec` with the OCI runtime `runtime` (`crun` or `runc`) from a bundle written to
/// `bundle` (removed afterwards) and wait for it.
pub fn run_oci(
    runtime: &str,
    bundle: &Path,
    id: &str,
    root: &Path,
    spec: &Spec,
) -> std::io::Result<std::process::ExitStatus> {
    std::fs::create_dir_all(bundle)?;
    let config = serde_json::to_vec_pretty(&bundle::config(spec, root)?).map_err(std::io::Error::other)?;
    std::fs::write(bundle.join("config.json"), config)?;
    let status = std::process::Command::new(runtime)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .status()
        .map_err(|e| std::io::Error::new(e.kind(), format!("starting {runtime}: {e}")));
    let _ = std::process::Command::new(runtime)
        .args(["delete", "--force", id])
        .output();
    let _ = std::fs::remove_dir_all(bundle);
    status
}

/// lamina's exit code for the program's status: its code, or 128 + the signal that ended it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// Arguments of `lamina mount` for a writable mount of `image` at `point`.
pub fn mount_args(image: &str, point: &Path, upper: Option<&Path>, keep: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["mount".into(), image.into(), point.into()];
    match upper {
        Some(u) => a.extend([OsString::from("--upper"), u.into()]),
        None => {
            a.push("--writable".into());
            if keep {
                a.push("--keep".into());
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(json).unwrap()
    }

    fn root_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(t.path().join("etc/group"), group).unwrap();
        t
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nappgrp:x:1001:\nextra:x:2000:app,other\nstaff:x:50:\n";

    fn base() -> serde_json::Value {
        serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    }

    #[test]
    fn entrypoint_cmd_env_and_workdir_come_from_the_config() {
        let t = root_with(PASSWD, GROUP);
        let mut c = base();
        c["config"] =
            serde_json::json!({"Entrypoint": ["/bin/ep"], "Cmd": ["a", "b"], "Env": ["A=1"], "WorkingDir": "/srv"});
        let s = spec(&config(c.clone()), &[], t.path(), "h").unwrap();
        assert_eq!(s.argv, ["/bin/ep", "a", "b"]);
        assert_eq!(s.cwd, "/srv");
        assert!(s.env.contains(&"A=1".to_string()));
        assert!(s.env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(s.env.contains(&"HOME=/root".to_string()));
        assert_eq!((s.uid, s.gid), (0, 0));
        // A command replaces Cmd, keeps the Entrypoint.
        let s = spec(&config(c), &["x".into()], t.path(), "h").unwrap();
        assert_eq!(s.argv, ["/bin/ep", "x"]);
        // Nothing to run.
        let e = spec(&config(base()), &[], t.path(), "h").unwrap_err();
        assert!(e.0.contains("no Entrypoint or Cmd"), "{e}");
    }

    #[test]
    fn users_and_groups_resolve_by_name_and_number() {
        let t = root_with(PASSWD, GROUP);
        let with_user = |u: &str| {
            let mut c = base();
            c["config"] = serde_json::json!({"Cmd": ["sh"], "User": u});
            spec(&config(c), &[], t.path(), "h")
        };
        let s = with_user("app").unwrap();
        assert_eq!((s.uid, s.gid, s.groups.clone()), (1000, 1001, vec![2000]));
        assert!(s.env.contains(&"HOME=/home/app".to_string()));
        let s = with_user("1000:staff").unwrap();
        assert_eq!((s.uid, s.gid), (1000, 50));
        let s = with_user("4242").unwrap();
        assert_eq!((s.uid, s.gid), (4242, 0));
        let s = with_user("app:7").unwrap();
        assert_eq!((s.uid, s.gid), (1000, 7));
        assert!(with_user("nobody-here")
            .unwrap_err()
            .0
            .contains("not in the image's /etc/passwd"));
        assert!(with_user("app:nogroup")
            .unwrap_err()
            .0
            .contains("not in the image's /etc/group"));
    }

    #[test]
    fn id_files_are_resolved_inside_the_image() {
        // /etc/passwd a symlink to an absolute path: resolved inside the root, not the host.
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::create_dir_all(t.path().join("alt")).unwrap();
        std::fs::write(t.path().join("alt/passwd"), "svc:x:77:77:S:/svc:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/alt/passwd", t.path().join("etc/passwd")).unwrap();
        let mut c = base();
        c["config"] = serde_json::json!({"Cmd": ["sh"], "User": "svc"});
        let s = spec(&config(c), &[], t.path(), "h").unwrap();
        assert_eq!(s.uid, 77);
    }

    #[test]
    fn exit_codes_follow_the_program() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
