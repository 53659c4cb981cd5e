//! The writable layer against its oracle, kernel overlayfs (`redirect_dir=on,index=on`) over the
//! same layers unpacked by umoci: the same seeded random operations on both, outcome by
//! outcome, then the final trees entry by entry; the upper directory survives a remount and
//! the kernel's overlayfs mounted on lamina's upper directory shows the same tree; a copy-up
//! that waits for the registry holds up nothing but its own file. Each for both ways a
//! writable mount is served ([`OVERLAYS`]).

use std::process::Command;

use crate::support::layers::noise;
use crate::support::mount::{fixture, oracle_options, Mounted, OVERLAYS};
use crate::support::overlay::{env_count, env_list, same_outcomes, KernelOverlay};
use crate::support::poll;
use crate::support::tree::{
    assert_same_snapshot, assert_same_tree_except, assert_upper_links_shown, snapshot, without_link_groups,
    without_mtimes, Mtimes,
};
use crate::support::{assert_ok, run};

#[test]
fn random_operations_match_kernel_overlayfs_and_survive_a_remount() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    let w = f.work.path();
    // LAMINA_OVL_SEEDS=a,b,… (else the CI set), LAMINA_OVL_OPS operations per seed.
    for (seed, overlay) in env_list("LAMINA_OVL_SEEDS", &[1, 2, 3, 4])
        .into_iter()
        .flat_map(|seed| OVERLAYS.map(|o| (seed, o)))
    {
        let dir = w.join(format!("seed{seed}-{overlay}"));
        let upper = dir.join("lamina-upper");
        let k = KernelOverlay::mount(
            &f.oracle,
            &dir.join("k-upper"),
            &dir.join("k-work"),
            &dir.join("k-mnt"),
            oracle_options(overlay),
        );
        let m = f.mount_upper(&format!("seed{seed}-{overlay}/mnt"), &upper, &["--overlay", overlay]);
        same_outcomes(seed, env_count("LAMINA_OVL_OPS", 250), &m.point, &k.point);
        // One hard-link group at least, whatever the seed did.
        for root in [&m.point, &k.point] {
            std::fs::write(root.join("linked-a"), b"one file, two names").unwrap();
            std::fs::hard_link(root.join("linked-a"), root.join("linked-b")).unwrap();
        }
        // The same operations ran on both sides at different moments, so everything they
        // touched (and its parent directory) has a different "now": mtimes are left out.
        // Inode numbers under kernel overlayfs depend on its lower: it shows a copied-up file
        // with its lower file's number, and finds the inode of a file's other names, by the
        // file handle its upper records, when it can decode that handle. Over umoci's tree
        // (ext4) it always can. Over lamina's view (FUSE, no uuid) it can only while the
        // lower file is in the kernel's cache, as it is for the whole first mount; after a
        // remount, names may share a number in one and not in the other. So the first mount
        // is compared whole; where kernel overlayfs serves lamina's upper again, hard-link
        // groups are left out.
        let by_kernel = |view: &std::path::Path, oracle: &std::path::Path| {
            let (a, b) = (snapshot(view), snapshot(oracle));
            let (a, b) = (without_mtimes(a, Mtimes::All), without_mtimes(b, Mtimes::All));
            assert_same_snapshot(&without_link_groups(a), &without_link_groups(b), view, oracle);
        };
        assert_same_tree_except(&m.point, &k.point, Mtimes::All);

        m.unmount();
        drop(m);

        // Kernel overlayfs over lamina's upper directory (and umoci's tree) shows the same tree
        // (inode numbers as above: the handles recorded by kernel overlayfs over lamina's view
        // are FUSE handles, which do not decode on umoci's tree).
        let k2 = KernelOverlay::over_lamina_upper(&f.oracle, &upper, &dir.join("k2-mnt"));
        match overlay {
            "kernel" => by_kernel(&k2.point, &k.point),
            _ => assert_same_tree_except(&k2.point, &k.point, Mtimes::All),
        }
        assert!(assert_upper_links_shown(&k2.point, &upper.join("upper")) >= 1);
        let over_upper = without_mtimes(snapshot(&k2.point), Mtimes::All);
        drop(k2);

        // The same upper again, served the same way and the other way: the same view as
        // kernel overlayfs over it.
        let other = OVERLAYS.into_iter().find(|o| *o != overlay).unwrap();
        for again in [overlay, other] {
            let m = f.mount_upper(
                &format!("seed{seed}-{overlay}/by-{again}"),
                &upper,
                &["--overlay", again],
            );
            let view = without_mtimes(snapshot(&m.point), Mtimes::All);
            let k2_point = dir.join("k2-mnt");
            if overlay == "kernel" || again == "kernel" {
                let (a, b) = (without_link_groups(view), without_link_groups(over_upper.clone()));
                assert_same_snapshot(&a, &b, &m.point, &k2_point);
            } else {
                assert_same_snapshot(&view, &over_upper, &m.point, &k2_point);
            }
            m.unmount();
            m.wait_daemon_gone("after umount");
        }
    }
}

#[test]
fn writable_mounts_refuse_foreign_upper_dirs_and_clean_up_after_themselves() {
    let Some(f) = fixture(&[]) else {
        return;
    };
    let w = f.work.path();
    let cache = f.cache();
    // Not a lamina upper directory: a clear error, nothing in it touched.
    let foreign = w.join("foreign");
    std::fs::create_dir_all(foreign.join("data")).unwrap();
    std::fs::write(foreign.join("data/keep"), b"mine").unwrap();
    std::fs::create_dir_all(w.join("mnt")).unwrap();
    // `lamina mount [EXTRA] --upper UPPER IMAGE W/POINT`, its output.
    let mount_upper = |extra: &[&str], upper: &std::path::Path, point: &str| {
        crate::support::lamina()
            .arg("mount")
            .args(extra)
            .arg("--upper")
            .arg(upper)
            .arg(&f.converted)
            .arg(w.join(point))
            .env("LAMINA_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    let err = crate::support::assert_failed(&mount_upper(&[], &foreign, "mnt"));
    assert!(err.contains("not a lamina upper directory"), "{err}");
    assert_eq!(std::fs::read(foreign.join("data/keep")).unwrap(), b"mine");

    for overlay in OVERLAYS {
        // An upper directory in use by another mount (served either way).
        let upper = w.join(format!("upper-{overlay}"));
        let m = f.mount_upper(&format!("a-{overlay}"), &upper, &["--overlay", overlay]);
        std::fs::write(m.point.join("etc/new"), b"x").unwrap();
        let by = if overlay == "kernel" {
            "kernel overlayfs"
        } else {
            "lamina"
        };
        m.stats_until(&cache, &[], |t| t.contains(&format!("(served by {by})")));
        let fstype = if overlay == "kernel" { " overlay " } else { " fuse" };
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            mounts
                .lines()
                .any(|l| l.contains(m.point.to_str().unwrap()) && l.contains(fstype)),
            "{overlay}: no{fstype}mount at {}:\n{mounts}",
            m.point.display()
        );
        std::fs::create_dir_all(w.join("b")).unwrap();
        for second in OVERLAYS {
            let err = crate::support::assert_failed(&mount_upper(&["--overlay", second], &upper, "b"));
            assert!(err.contains("in use"), "{overlay} then {second}: {err}");
        }
        if overlay == "kernel" {
            // A killed daemon leaves its kernel overlayfs mounted (on the upper, without the
            // image below): the upper stays refused until that mount is gone.
            run(Command::new("kill").args(["-KILL", &m.pid.to_string()]));
            m.wait_daemon_gone("after SIGKILL");
            let again = || mount_upper(&[], &upper, "b");
            let err = crate::support::assert_failed(&again());
            assert!(err.contains("in use by the kernel overlayfs mounted at"), "{err}");
            m.unmount();
            assert_ok(&again());
            assert_eq!(std::fs::read(w.join("b/etc/new")).unwrap(), b"x");
            assert_ok(
                &crate::support::lamina()
                    .arg("umount")
                    .arg(w.join("b"))
                    .output()
                    .unwrap(),
            );
        }
        drop(m);

        // --writable: a fresh upper under the cache directory, gone after umount; --keep
        // keeps it. Nothing else is left: no mount, and nothing in the upper's tmp/.
        for keep in [false, true] {
            let mut extra = vec!["--overlay", overlay, "--writable"];
            if keep {
                extra.push("--keep");
            }
            let m = f.mount(&format!("wr{keep}-{overlay}"), &extra);
            std::fs::write(m.point.join("etc/written"), b"data").unwrap();
            assert_eq!(std::fs::read(m.point.join("etc/written")).unwrap(), b"data");
            m.unmount();
            m.wait_daemon_gone("after umount");
            let uppers = cache.join("uppers");
            let left: Vec<_> = std::fs::read_dir(&uppers).map_or(vec![], |d| d.map(|e| e.unwrap().path()).collect());
            assert_eq!(
                left.len(),
                usize::from(keep),
                "upper directories left: {left:?} (keep {keep})"
            );
            for kept in left {
                assert_eq!(
                    std::fs::read_dir(kept.join("tmp")).unwrap().count(),
                    0,
                    "{overlay}: tmp/ not empty"
                );
                std::fs::remove_dir_all(kept).unwrap();
            }
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
            assert!(
                !mounts.contains(w.to_str().unwrap()),
                "{overlay}: a mount is left:\n{mounts}"
            );
        }
    }
}

#[test]
fn metadata_changes_copy_up_metadata_only_until_the_first_write() {
    let Some(f) = fixture(&["getfattr"]) else {
        return;
    };
    for overlay in OVERLAYS {
        metacopy_until_the_first_write(&f, overlay);
    }
}

fn metacopy_until_the_first_write(f: &crate::support::mount::Fixture, overlay: &str) {
    let w = &f.work.path().join(overlay);
    let upper = w.join("upper");
    let by = ["--overlay", overlay];
    let lower_bytes = std::fs::read(f.oracle.join("usr/lib/big")).unwrap();
    let m = f.mount_upper(&format!("{overlay}/mnt"), &upper, &["--overlay", overlay, "--metacopy"]);
    let file = m.point.join("usr/lib/big");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(42), Some(43)).unwrap();
    // The upper file: the size, no data (SEEK_DATA finds none; its blocks may hold xattrs),
    // the overlayfs metacopy marker.
    let u = upper.join("upper/usr/lib/big");
    let meta = std::fs::symlink_metadata(&u).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), lower_bytes.len() as u64);
    let data = rustix::fs::seek(std::fs::File::open(&u).unwrap(), rustix::fs::SeekFrom::Data(0));
    assert_eq!(data, Err(rustix::io::Errno::NXIO), "{overlay}: the data was copied up");
    let marker = run(Command::new("getfattr")
        .args(["--absolute-names", "-n", "trusted.overlay.metacopy"])
        .arg(&u));
    assert!(String::from_utf8_lossy(&marker.stdout).contains("trusted.overlay.metacopy"));
    assert_eq!(std::fs::read(&file).unwrap(), lower_bytes);
    let st = std::fs::metadata(&file).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o600, 42, 43));

    // After a remount too; the kernel's overlayfs (metacopy=on) reads lamina's upper alike.
    m.unmount();
    drop(m);
    // (Without --metacopy: the upper keeps the choice it was made with.)
    let m = f.mount_upper(&format!("{overlay}/mnt2"), &upper, &by);
    let file = m.point.join("usr/lib/big");
    assert_eq!(std::fs::read(&file).unwrap(), lower_bytes);
    m.unmount();
    drop(m);
    {
        let k = KernelOverlay::over_lamina_upper(&f.oracle, &upper, &w.join("k-mnt"));
        assert_eq!(std::fs::read(k.point.join("usr/lib/big")).unwrap(), lower_bytes);
    }

    // The first write copies the bytes up in place and drops the marker.
    let m = f.mount_upper(&format!("{overlay}/mnt3"), &upper, &by);
    let file = m.point.join("usr/lib/big");
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"tail")
            .unwrap();
    }
    let mut want = lower_bytes.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(std::fs::read(&file).unwrap(), want);
    let marker = Command::new("getfattr")
        .args(["--absolute-names", "-n", "trusted.overlay.metacopy"])
        .arg(&u)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&marker.stdout).contains("metacopy"));
    assert_eq!(std::fs::read(&u).unwrap(), want);
    let st = std::fs::metadata(&file).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o600, 42, 43));
}

/// Issue 13: metacopy is opt-in. An upper made without `--metacopy` holds whole copies for
/// metadata changes, readable by kernel overlayfs mounted with its defaults (metacopy off, as
/// Docker and containerd mount it); asking for metacopy on it later keeps its choice.
#[test]
fn metacopy_is_off_by_default_and_kernel_overlayfs_reads_the_upper_with_defaults() {
    let Some(f) = fixture(&["getfattr"]) else {
        return;
    };
    let w = f.work.path();
    let upper = w.join("upper");
    let has_marker = |p: &std::path::Path| {
        let out = Command::new("getfattr")
            .args(["--absolute-names", "-n", "trusted.overlay.metacopy"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("metacopy")
    };
    // Each mount changes the owner of a file not copied up yet; the upper made by the first
    // (without --metacopy) keeps that choice when later mounts (served either way) ask for it.
    let steps = [
        ("usr/lib/big", "kernel", false),
        ("usr/bin/tool", "fuse", true),
        ("usr/lib/libx.so.1", "kernel", true),
    ];
    for (i, (path, overlay, metacopy)) in steps.into_iter().enumerate() {
        let mut extra = vec!["--overlay", overlay];
        if metacopy {
            extra.push("--metacopy");
        }
        let m = f.mount_upper(&format!("mnt{i}"), &upper, &extra);
        std::os::unix::fs::chown(m.point.join(path), Some(42), Some(43)).unwrap();
        let u = upper.join("upper").join(path);
        assert!(
            !has_marker(&u),
            "{path} ({overlay}): a metacopy file, not asked for at creation"
        );
        assert!(
            std::fs::read(&u).unwrap() == std::fs::read(f.oracle.join(path)).unwrap(),
            "{path} ({overlay}): the data was not copied up"
        );
        m.unmount();
        m.wait_daemon_gone("after umount");
    }
    let identity = std::fs::read_to_string(upper.join("lamina-upper.json")).unwrap();
    assert!(identity.contains("\"metacopy\": false"), "{identity}");
    // Kernel overlayfs with its defaults: no metacopy, no redirect_dir options.
    let k = KernelOverlay::mount(
        &f.oracle,
        &upper.join("upper"),
        &upper.join("work"),
        &w.join("k-mnt"),
        "",
    );
    use std::os::unix::fs::MetadataExt;
    for (path, _, _) in steps {
        assert!(std::fs::read(k.point.join(path)).unwrap() == std::fs::read(f.oracle.join(path)).unwrap());
        let st = std::fs::metadata(k.point.join(path)).unwrap();
        assert_eq!((st.uid(), st.gid()), (42, 43), "{path}");
    }
}

/// Issue 13, item 3: while one file's copy-up waits for the registry, `stat`, `ls` and reads
/// of a cached file on the same mount go on; a second opener of the same file waits for that
/// copy-up, and both see its bytes once it lands.
///
/// The fault proxy holds the copy-up's fetch (it answers the Range request's headers and then
/// nothing until the test says so), so the copy-up is provably in progress the whole time the
/// other operations run; no timing threshold is involved. With one lock held across the
/// fetch (as before this test), none of them ends until the fetch does, and the poll below
/// fails after its deadline.
#[test]
fn issue13_stat_ls_and_cached_reads_go_on_during_a_held_copy_up() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    for overlay in OVERLAYS {
        held_copy_up(&f, overlay);
    }
}

fn held_copy_up(f: &crate::support::mount::Fixture, overlay: &str) {
    let w = &f.work.path().join(overlay);
    std::fs::create_dir_all(w).unwrap();
    let mode = w.join("fault-mode");
    std::fs::write(&mode, "pass").unwrap();
    let log = w.join("proxy.log");
    let (_proxy, proxy_addr) = crate::fetching::fault_proxy(&f.registry.addr, &mode, &log);
    let image = f.converted.replace(&f.registry.addr, &proxy_addr);
    let m = Mounted::new(
        &image,
        &w.join("mnt"),
        &w.join("cache"),
        &[
            "--overlay",
            overlay,
            "--upper",
            w.join("upper").to_str().unwrap(),
            "--fetch-timeout",
            "600",
            "--prefetch",
            "none",
        ],
    );
    let lib = m.point.join("usr/lib");
    let cached = noise(70_000, 3);
    assert_eq!(std::fs::read(lib.join("libx.so.2")).unwrap(), cached);

    // Every blob request from now on is held before its first body byte.
    std::fs::write(&mode, "hold:0").unwrap();
    let open_for_write = |name: &str| {
        let path = lib.join(name);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || -> std::io::Result<()> {
            tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            std::os::unix::fs::FileExt::write_all_at(&file, b"head", 0)
        });
        (t, tid_rx.recv().unwrap())
    };
    let (writer, _) = open_for_write("big");
    poll::until("the copy-up's fetch to be held by the proxy", || {
        std::fs::read_to_string(&log).unwrap().contains("HOLD").then_some(())
    });

    // Meanwhile, on other files: stat (a fresh lookup), ls, and a read of a cached file that
    // the daemon must serve (its open, and its pages dropped from the kernel's cache).
    let others = {
        let lib = lib.clone();
        std::thread::spawn(move || {
            let size = std::fs::symlink_metadata(lib.join("libx.so.1")).unwrap().len();
            let names = crate::support::dir_names(&lib);
            let file = std::fs::File::open(lib.join("libx.so.2")).unwrap();
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
            let big_size = std::fs::metadata(lib.join("big")).unwrap().len();
            std::fs::write(lib.join("new-during-copy-up"), b"x").unwrap();
            (size, names, bytes, big_size)
        })
    };
    poll::until("the other operations (or the copy-up) to end", || {
        (others.is_finished() || writer.is_finished()).then_some(())
    });
    assert!(!writer.is_finished(), "the copy-up ended while its fetch was held");
    let (size, names, bytes, big_size) = others.join().unwrap();
    assert_eq!(size, 1 << 20);
    assert!(
        names.iter().any(|n| n == "big") && names.iter().any(|n| n == "libx.so.2"),
        "{names:?}"
    );
    assert!(bytes == cached, "the cached file read back wrong");
    assert_eq!(big_size, 6 << 20, "the file being copied up shows its lower size");

    // A second opener of the same file waits for that copy-up (blocked in openat).
    let (second, tid) = open_for_write("big");
    poll::until("the second opener to wait in openat", || {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let nr = s.split_whitespace().next().and_then(|n| n.parse::<u32>().ok());
        nr.filter(|n| !cfg!(target_arch = "x86_64") || *n == 257)
    });
    assert!(!writer.is_finished() && !second.is_finished());

    // Let the fetch go: both openers get the copied-up file.
    std::fs::write(&mode, "pass").unwrap();
    writer.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    let mut want = noise(6 << 20, 42);
    want[..4].copy_from_slice(b"head");
    assert!(std::fs::read(lib.join("big")).unwrap() == want, "big after the copy-up");
    assert!(std::fs::read(w.join("upper/upper/usr/lib/big")).unwrap() == want);
}
