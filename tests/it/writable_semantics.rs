//! Single overlayfs semantics of the writable layer, each against kernel overlayfs
//! (`redirect_dir=on,index=on`) over the same layers: fixed steps
//! (`support/overlay_cases.py`), outcome by outcome, for both ways a writable mount is
//! served ([`OVERLAYS`]). The cases are the differences an fsstress comparison found (issue
//! 13, "External suites").

use std::path::Path;
use std::process::Command;

use crate::support::mount::{fixture, oracle_options, Fixture, OVERLAYS};
use crate::support::overlay::{run_script, KernelOverlay};
use crate::support::run;

/// Clears immutable/append-only flags under `dirs` when dropped (the driver clears what it
/// sets, this is for a driver that was killed), so the test's directory can be removed.
struct ClearFlags<'a>(Vec<&'a Path>);

impl Drop for ClearFlags<'_> {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("chattr").args(["-R", "-i", "-a"]).arg(d).output();
        }
    }
}

/// Run `case` of the driver on fresh lamina mounts (each of [`OVERLAYS`]) and a fresh kernel
/// overlayfs each.
fn same_as_kernel(f: &Fixture, case: &str) {
    for overlay in OVERLAYS {
        let dir = f.work.path().join(format!("{case}-{overlay}"));
        let (k_upper, l_upper) = (dir.join("k-upper"), dir.join("lamina-upper"));
        let _clear = ClearFlags(vec![&k_upper, &l_upper]);
        let k = KernelOverlay::mount(
            &f.oracle,
            &k_upper,
            &dir.join("k-work"),
            &dir.join("k-mnt"),
            oracle_options(overlay),
        );
        let m = f.mount_upper(&format!("{case}-{overlay}/mnt"), &l_upper, &["--overlay", overlay]);
        run_script(
            "overlay_cases.py",
            &[
                case.as_ref(),
                m.point.as_os_str(),
                k.point.as_os_str(),
                overlay.as_ref(),
            ],
            &format!("lamina (--overlay {overlay}) and kernel overlayfs disagree"),
        );
    }
}

/// Writes and truncates by a caller without CAP_FSETID clear set-ID bits (lamina clears them
/// itself under FUSE_HANDLE_KILLPRIV_V2, which spares a `security.capability` round trip per
/// write); root's writes keep them; a group-ID bit without group-execute stays.
#[test]
fn writes_and_truncates_clear_set_id_bits_as_kernel_overlayfs() {
    if let Some(f) = fixture(&["python3"]) {
        same_as_kernel(&f, "set-id-bits");
    }
}

#[test]
fn chown_to_the_same_owner_moves_ctime_as_kernel_overlayfs() {
    if let Some(f) = fixture(&["python3"]) {
        same_as_kernel(&f, "chown-ctime");
    }
}

/// The kernel's FUSE answers COLLAPSE_RANGE/INSERT_RANGE with EOPNOTSUPP itself; lamina's own
/// overlay would pass them on to the upper file (whose file system then answers as under
/// kernel overlayfs). Fails once a kernel forwards them: then the known difference in the
/// driver must go. Kernel overlayfs over lamina's view answers every step alike.
#[test]
fn fallocate_collapse_and_insert_range_differ_from_kernel_overlayfs_only_as_fuse_forces() {
    if let Some(f) = fixture(&["python3"]) {
        same_as_kernel(&f, "fallocate-ranges");
    }
}

#[test]
fn immutable_and_append_only_flags_are_kept_and_enforced_as_kernel_overlayfs() {
    let Some(f) = fixture(&["python3", "chattr", "lsattr", "getfattr"]) else {
        return;
    };
    same_as_kernel(&f, "file-flags");

    // Recorded as kernel overlayfs records them (`trusted.overlay.protattr`), and by lamina's
    // own overlay also kept on the upper file, where its file system enforces them: after a
    // remount, and under kernel overlayfs over lamina's upper, an overwrite is refused and an
    // append goes through.
    for overlay in OVERLAYS {
        let w = f.work.path().join(format!("kept-{overlay}"));
        let upper = w.join("upper");
        let _clear = ClearFlags(vec![&upper]);
        let m = f.mount_upper(&format!("kept-{overlay}/mnt"), &upper, &["--overlay", overlay]);
        run(Command::new("chattr").arg("+a").arg(m.point.join("etc/chmod-me")));
        let shown = run(Command::new("lsattr").arg(upper.join("upper/etc/chmod-me")));
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert_eq!(
            shown.split_whitespace().next().is_some_and(|f| f.contains('a')),
            overlay == "fuse",
            "{overlay}: {shown}"
        );
        let record = run(Command::new("getfattr")
            .args(["--absolute-names", "--only-values", "-n", "trusted.overlay.protattr"])
            .arg(upper.join("upper/etc/chmod-me")));
        assert_eq!(record.stdout, b"a");
        m.unmount();
        drop(m);
        let only_appends = |file: &Path| {
            let overwrite = std::fs::OpenOptions::new().write(true).open(file).unwrap_err();
            assert_eq!(overwrite.raw_os_error(), Some(1), "EPERM expected: {overwrite}");
            let mut append = std::fs::OpenOptions::new()
                .append(true)
                .open(file)
                .unwrap_or_else(|e| panic!("appending to {}: {e}", file.display()));
            std::io::Write::write_all(&mut append, b"appended\n").unwrap();
        };
        {
            let k = KernelOverlay::over_lamina_upper(&f.oracle, &upper, &w.join("k-mnt"));
            only_appends(&k.point.join("etc/chmod-me"));
        }
        let m = f.mount_upper(&format!("kept-{overlay}/mnt2"), &upper, &["--overlay", overlay]);
        let file = m.point.join("etc/chmod-me");
        only_appends(&file);
        run(Command::new("chattr").arg("-a").arg(&file));
        let left = run(Command::new("getfattr")
            .args(["--absolute-names", "-d", "-m", "-"])
            .arg(upper.join("upper/etc/chmod-me")));
        let left = String::from_utf8_lossy(&left.stdout).into_owned();
        assert!(!left.contains("protattr"), "the record outlives the flags: {left}");
        std::fs::remove_file(&file).unwrap();
    }
}
