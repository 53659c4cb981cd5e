//! The writable layer against its oracle, kernel overlayfs (`redirect_dir=on,index=on`) over the
//! same layers unpacked by umoci: the same seeded random operations on both, outcome by
//! outcome, then the final trees entry by entry; the upper directory survives a remount and
//! the kernel's overlayfs mounted on lamina's upper directory shows the same tree; a copy-up
//! that waits for the registry holds up nothing but its own file.

use std::process::Command;

use crate::support::layers::noise;
use crate::support::mount::{fixture, Mounted};
use crate::support::overlay::{env_count, env_list, same_outcomes, KernelOverlay};
use crate::support::poll;
use crate::support::run;
use crate::support::tree::{assert_same_tree_except, Mtimes};

#[test]
fn random_operations_match_kernel_overlayfs_and_survive_a_remount() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    let w = f.work.path();
    // LAMINA_OVL_SEEDS=a,b,… (else the CI set), LAMINA_OVL_OPS operations per seed.
    for seed in env_list("LAMINA_OVL_SEEDS", &[1, 2, 3, 4]) {
        let dir = w.join(format!("seed{seed}"));
        let upper = dir.join("lamina-upper");
        let k = KernelOverlay::mount(
            &f.oracle,
            &dir.join("k-upper"),
            &dir.join("k-work"),
            &dir.join("k-mnt"),
            "redirect_dir=on,index=on",
        );
        let m = f.mount_upper(&format!("seed{seed}/mnt"), &upper, &[]);
        same_outcomes(seed, env_count("LAMINA_OVL_OPS", 250), &m.point, &k.point);
        // The same operations ran on both sides at different moments, so everything they
        // touched (and its parent directory) has a different "now": mtimes are left out.
        let same_tree = |a: &std::path::Path, b: &std::path::Path| assert_same_tree_except(a, b, Mtimes::All);
        same_tree(&m.point, &k.point);

        // The same upper again: the same view.
        m.unmount();
        drop(m);
        let m = f.mount_upper(&format!("seed{seed}/mnt2"), &upper, &[]);
        same_tree(&m.point, &k.point);
        drop(m);

        // Kernel overlayfs over lamina's upper directory shows the same tree.
        let k2 = KernelOverlay::over_lamina_upper(&f.oracle, &upper, &dir.join("k2-mnt"));
        same_tree(&k2.point, &k.point);
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
    let out = crate::support::lamina()
        .args(["mount", "--upper"])
        .arg(&foreign)
        .arg(&f.converted)
        .arg(w.join("mnt"))
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let err = crate::support::assert_failed(&out);
    assert!(err.contains("not a lamina upper directory"), "{err}");
    assert_eq!(std::fs::read(foreign.join("data/keep")).unwrap(), b"mine");

    // An upper directory in use by another mount.
    let upper = w.join("upper");
    let m = f.mount_upper("a", &upper, &[]);
    std::fs::write(m.point.join("etc/new"), b"x").unwrap();
    std::fs::create_dir_all(w.join("b")).unwrap();
    let out = crate::support::lamina()
        .args(["mount", "--upper"])
        .arg(&upper)
        .arg(&f.converted)
        .arg(w.join("b"))
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let err = crate::support::assert_failed(&out);
    assert!(err.contains("in use"), "{err}");
    drop(m);

    // --writable: a fresh upper under the cache directory, gone after umount; --keep keeps it.
    for keep in [false, true] {
        let mut extra = vec!["--writable"];
        if keep {
            extra.push("--keep");
        }
        let m = f.mount(&format!("wr{keep}"), &extra);
        std::fs::write(m.point.join("etc/written"), b"data").unwrap();
        assert_eq!(std::fs::read(m.point.join("etc/written")).unwrap(), b"data");
        m.unmount();
        m.wait_daemon_gone("after umount");
        let left = std::fs::read_dir(cache.join("uppers")).map_or(0, |d| d.count());
        assert_eq!(left, usize::from(keep), "upper directories left: {left} (keep {keep})");
    }
}

#[test]
fn metadata_changes_copy_up_metadata_only_until_the_first_write() {
    let Some(f) = fixture(&["getfattr"]) else {
        return;
    };
    let w = f.work.path();
    let upper = w.join("upper");
    let lower_bytes = std::fs::read(f.oracle.join("usr/lib/big")).unwrap();
    let m = f.mount_upper("mnt", &upper, &["--metacopy"]);
    let file = m.point.join("usr/lib/big");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(42), Some(43)).unwrap();
    // The upper file: the size, no data blocks, the overlayfs metacopy marker.
    let u = upper.join("upper/usr/lib/big");
    let meta = std::fs::symlink_metadata(&u).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), lower_bytes.len() as u64);
    assert_eq!(meta.blocks(), 0, "the data was copied up");
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
    let m = f.mount_upper("mnt2", &upper, &[]);
    let file = m.point.join("usr/lib/big");
    assert_eq!(std::fs::read(&file).unwrap(), lower_bytes);
    m.unmount();
    drop(m);
    {
        let k = KernelOverlay::over_lamina_upper(&f.oracle, &upper, &w.join("k-mnt"));
        assert_eq!(std::fs::read(k.point.join("usr/lib/big")).unwrap(), lower_bytes);
    }

    // The first write copies the bytes up in place and drops the marker.
    let m = f.mount_upper("mnt3", &upper, &[]);
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
    let lower_bytes = std::fs::read(f.oracle.join("usr/lib/big")).unwrap();
    let has_marker = |p: &std::path::Path| {
        let out = Command::new("getfattr")
            .args(["--absolute-names", "-n", "trusted.overlay.metacopy"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("metacopy")
    };
    for (name, extra) in [("mnt", &[][..]), ("mnt2", &["--metacopy"][..])] {
        let m = f.mount_upper(name, &upper, extra);
        let file = m.point.join("usr/lib/big");
        std::os::unix::fs::chown(&file, Some(42), Some(43)).unwrap();
        let u = upper.join("upper/usr/lib/big");
        assert!(
            !has_marker(&u),
            "{name}: a metacopy file without --metacopy at creation"
        );
        assert_eq!(
            std::fs::read(&u).unwrap(),
            lower_bytes,
            "{name}: the data was not copied up"
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
    assert_eq!(std::fs::read(k.point.join("usr/lib/big")).unwrap(), lower_bytes);
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::metadata(k.point.join("usr/lib/big")).unwrap();
    assert_eq!((st.uid(), st.gid()), (42, 43));
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
    let w = f.work.path();
    let mode = w.join("fault-mode");
    std::fs::write(&mode, "pass").unwrap();
    let log = w.join("proxy.log");
    let (_proxy, proxy_addr) = crate::fetching::fault_proxy(&f.registry.addr, &mode, &log);
    let image = f.converted.replace(&f.registry.addr, &proxy_addr);
    let m = Mounted::new(
        &image,
        &w.join("mnt"),
        &f.cache(),
        &[
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
