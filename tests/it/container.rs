//! `lamina commit` (a writable mount's changes as a new image, checked by pulling it back with
//! lamina and with skopeo + umoci) and `lamina run --runtime chroot` (the image's program in
//! a chroot with its config's user, cwd and env; exit status; clean-up).

use std::path::Path;
use std::process::Command;

use crate::convert::skopeo_gzip_unpack;
use crate::support::layers::{build_layout, push_and_convert, Step};
use crate::support::mount::{add_python, fixture, have_python, oracle_options, require_fuse, Mounted, OVERLAYS};
use crate::support::overlay::{same_outcomes, KernelOverlay};
use crate::support::registry::TestRegistry;
use crate::support::tree::{
    assert_same_pulled_tree, assert_same_snapshot, assert_same_tree_except, snapshot, without_empty_xattrs,
    without_mtimes, Mtimes,
};
use crate::support::{assert_ok, lamina, lamina_pull, require_root, require_tools, run};

/// Changes of every kind a layer can carry, made under `root` (a merged view).
fn scripted_changes(root: &Path) {
    let p = |s: &str| root.join(s);
    // A lower directory moved (it holds a member of a hard-link group), then written in.
    std::fs::rename(p("usr/lib"), p("usr/lib-moved")).unwrap();
    std::fs::write(p("usr/lib-moved/new-in-moved"), b"n").unwrap();
    // The group copied up after the move: every name must stay one inode.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(p("usr/bin/tool"))
        .unwrap()
        .write_all(b"appended")
        .unwrap();
    // A lower directory removed and made again: opaque.
    std::fs::remove_dir_all(p("opt/opq")).unwrap();
    std::fs::create_dir(p("opt/opq")).unwrap();
    std::fs::write(p("opt/opq/fresh"), b"f").unwrap();
    // Whiteouts of a file and of a directory.
    std::fs::remove_file(p("etc/chmod-me")).unwrap();
    std::fs::remove_dir_all(p("etc/thing")).unwrap();
    // New hard links, symlink, devices, xattr; metadata changes of lower entries.
    std::fs::create_dir_all(p("home/user/new")).unwrap();
    std::fs::write(p("home/user/new/a"), b"linked").unwrap();
    std::fs::hard_link(p("home/user/new/a"), p("home/user/new/b")).unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", p("home/user/new/sym")).unwrap();
    run(Command::new("mknod").arg(p("home/user/new/dev")).args(["c", "1", "7"]));
    run(Command::new("mkfifo").arg(p("home/user/new/fifo")));
    run(Command::new("setfattr")
        .args(["-n", "user.note", "-v", "committed"])
        .arg(p("home/user/new/a")));
    std::os::unix::fs::chown(p("usr/share/empty"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(p("usr/bin/suid"), std::os::unix::fs::PermissionsExt::from_mode(0o4700)).unwrap();
}

fn config_of(image: &str) -> serde_json::Value {
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--config", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout;
    serde_json::from_slice(&raw).unwrap()
}

#[test]
fn committed_images_equal_the_mounted_view_for_lamina_and_for_skopeo_and_umoci() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    for overlay in OVERLAYS {
        commit_case(&f, overlay);
    }
}

fn commit_case(f: &crate::support::mount::Fixture, overlay: &str) {
    let w = &f.work.path().join(overlay);
    let cache = f.cache();
    let upper = w.join("upper");
    let k = KernelOverlay::mount(
        &f.oracle,
        &w.join("k-upper"),
        &w.join("k-work"),
        &w.join("k-mnt"),
        oracle_options(overlay),
    );
    let m = f.mount_upper(&format!("{overlay}/mnt"), &upper, &["--overlay", overlay]);
    scripted_changes(&m.point);
    scripted_changes(&w.join("k-mnt"));
    same_outcomes(7, 150, &m.point, &w.join("k-mnt"));
    // The same changes ran on both sides at different moments: mtimes differ.
    assert_same_tree_except(&m.point, &w.join("k-mnt"), Mtimes::All);
    drop(k);

    // From the mount point.
    let committed = format!("{}/committed-{overlay}:t", f.registry.addr);
    let out = lamina()
        .args(["commit", "-m", "scripted and random changes"])
        .arg(&m.point)
        .arg(&committed)
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_ok(&out);
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let pulled = w.join("pulled");
    assert_ok(&lamina_pull(&committed, &pulled, &[]));
    // The committed layer carries whole seconds (no PAX mtime), and it was pulled (see
    // assert_same_pulled_tree for directories).
    assert_same_tree_except(&pulled, &m.point, Mtimes::OfDirsAndNanos);
    // umoci reads xattrs with empty values as deleted PAX records (POSIX says so), so those
    // are left out of its side of the comparison.
    let unpacked = skopeo_gzip_unpack(&committed, w, "committed");
    assert_same_snapshot(
        &without_mtimes(snapshot(&unpacked), Mtimes::Nanos),
        &without_mtimes(without_empty_xattrs(snapshot(&m.point)), Mtimes::Nanos),
        &unpacked,
        &m.point,
    );
    let base = config_of(&f.converted);
    let new = config_of(&committed);
    let ids = |c: &serde_json::Value| c["rootfs"]["diff_ids"].as_array().unwrap().len();
    assert_eq!(ids(&new), ids(&base) + 1);
    let last = new["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["created_by"], "lamina commit");
    assert_eq!(last["comment"], "scripted and random changes");
    // Mounted lazily, it shows the same tree too.
    let again = Mounted::new(&committed, &w.join("mnt-committed"), &cache, &[]);
    assert_same_pulled_tree(&pulled, &again.point);
    drop(again);

    // From the upper directory, unmounted: its moved directories need the merged view, which
    // commit mounts for itself and takes down afterwards.
    m.unmount();
    drop(m);
    let committed2 = format!("{}/committed2-{overlay}:t", f.registry.addr);
    let out = lamina()
        .arg("commit")
        .arg(&upper)
        .arg(&committed2)
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_ok(&out);
    let pulled2 = w.join("pulled2");
    assert_ok(&lamina_pull(&committed2, &pulled2, &[]));
    assert_same_pulled_tree(&pulled2, &pulled);
    let leftover = std::fs::read_dir(cache.join("commit-mounts")).map_or(0, |d| d.count());
    assert_eq!(leftover, 0, "commit left its mount behind");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains("commit-mounts"), "{mounts}");

    // A read-only mount and a directory that is neither are refused clearly.
    let ro = f.mount(&format!("{overlay}/mnt-ro"), &[]);
    let out = lamina()
        .arg("commit")
        .arg(&ro.point)
        .arg(&committed2)
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let err = crate::support::assert_failed(&out);
    assert!(err.contains("read-only mount"), "{err}");
    let out = lamina()
        .arg("commit")
        .arg(w)
        .arg(&committed2)
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let err = crate::support::assert_failed(&out);
    assert!(
        err.contains("neither a lamina upper directory nor a running lamina mount"),
        "{err}"
    );
}

fn lamina_mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// python3, a user `app` (1000, also in group `extra`, 2000) and the directories a container
/// needs.
fn python_user_image(rootfs: &Path) {
    add_python(rootfs);
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n").unwrap();
    for d in ["proc", "dev", "work", "home/app"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::os::unix::fs::chown(rootfs.join("work"), Some(1000), Some(1000)).unwrap();
}

#[test]
fn run_starts_the_images_program_as_its_config_says_and_cleans_up() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "ldd", "cp"])
        || !require_root()
        || !require_fuse()
        || !have_python()
    {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_layout(w, &[Step::Repack(python_user_image)]);
    umoci.config(
        "t",
        &[
            "--config.user",
            "app",
            "--config.workingdir",
            "/work",
            "--config.env",
            "GREETING=hi",
            "--config.cmd",
            "python3",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "print('the default command')",
        ],
    );
    let src = format!("{}/runme:t", registry.addr);
    let image = format!("{}/runme:zc", registry.addr);
    push_and_convert(&umoci.layout, &src, &image, &w.join("convert-cache"));
    let cache = w.join("cache");
    let lamina_run = |extra: &[&str], cmd: &[&str]| {
        let mut c = lamina();
        c.arg("run").args(extra).arg(&image);
        if !cmd.is_empty() {
            c.arg("--").args(cmd);
        }
        c.env("LAMINA_CACHE_DIR", &cache).output().unwrap()
    };
    let script = "import os, socket, sys; \
        print(os.getcwd(), os.getuid(), os.getgid(), sorted(os.getgroups()), os.environ['GREETING'], \
        os.environ['HOME'], os.getpid(), socket.gethostname().startswith('lamina-')); \
        open('/work/out', 'w').write('written in the container'); sys.exit(7)";

    // The config's user, groups, cwd and env; PID 1 of its own namespace; its exit status.
    let out = lamina_run(&[], &["python3", "-c", script]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "/work 1000 1000 [2000] hi /home/app 1 True"
    );
    // Afterwards: no mount, no mount point, no writable layer left.
    assert!(
        lamina_mounts_under(&cache).is_empty(),
        "{:?}",
        lamina_mounts_under(&cache)
    );
    assert_eq!(count(&cache.join("run")), 0);
    assert_eq!(count(&cache.join("uppers")), 0);

    // The image's own command.
    let out = lamina_run(&[], &[]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "the default command");

    // --upper keeps the changes (and nothing else stays mounted).
    let upper = w.join("upper");
    let out = lamina_run(&["--upper", upper.to_str().unwrap()], &["python3", "-c", script]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        std::fs::read_to_string(upper.join("upper/work/out")).unwrap(),
        "written in the container"
    );
    assert!(lamina_mounts_under(&cache).is_empty());

    // A program the image does not have: a clear error, and still cleaned up.
    let out = lamina_run(&[], &["no-such-program"]);
    let err = crate::support::assert_failed(&out);
    assert!(err.contains("no-such-program"), "{err}");
    assert!(lamina_mounts_under(&cache).is_empty());
    assert_eq!(count(&cache.join("run")), 0);
}
