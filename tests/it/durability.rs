//! The writable layer keeps data: an fsx-style integrity run survives a remount; a daemon
//! killed with SIGKILL mid-write loses no fsync'ed byte and leaves a consistent upper; a full
//! upper gives ENOSPC and damages nothing; a copy-up whose chunks cannot be fetched fails with
//! EIO and leaves the lower file as it was. Each for both ways a writable mount is served
//! ([`OVERLAYS`]), but the killed daemon: under kernel overlayfs, writes do not pass through it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::mount::{fixture, Mounted, OVERLAYS};
use crate::support::overlay::{env_count, env_list, run_script, KernelOverlay};
use crate::support::tree::assert_same_tree;
use crate::support::{python, run};

fn fsx(args: &[&str]) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run_script("fsx.py", &args, "fsx");
}

#[test]
fn fsx_writes_match_the_model_and_survive_a_remount() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    let w = f.work.path();
    // LAMINA_FSX_SEEDS=a,b,… (else the CI set), LAMINA_FSX_OPS operations each.
    let seeds = env_list("LAMINA_FSX_SEEDS", &[11, 12]);
    let ops = env_count("LAMINA_FSX_OPS", 1500);
    // lamina's own overlay with FUSE passthrough (the kernel writes the upper file) and
    // without (lamina does), and kernel overlayfs over lamina's view.
    let modes: [(&str, &[&str]); 3] = [
        ("passthrough", &["--overlay", "fuse"]),
        ("no-passthrough", &["--overlay", "fuse", "--no-passthrough"]),
        ("kernel", &["--overlay", "kernel"]),
    ];
    for (mode, extra) in modes {
        let upper = w.join(format!("upper-{mode}"));
        let m = f.mount_upper(&format!("mnt-{mode}"), &upper, extra);
        // A lower file (copied up by the first write), then a new file per seed.
        let mut runs = vec![("usr/lib/libx.so.1".to_string(), seeds[0])];
        runs.extend(seeds.iter().map(|s| (format!("fresh-{s}"), *s)));
        let mut files = Vec::new();
        for (i, (name, seed)) in runs.into_iter().enumerate() {
            let model = w.join(format!("model-{mode}-{i}"));
            fsx(&[
                "run",
                &seed.to_string(),
                &ops.to_string(),
                m.point.join(&name).to_str().unwrap(),
                model.to_str().unwrap(),
            ]);
            files.push((name, model));
        }
        m.unmount();
        drop(m);
        let m = f.mount_upper(&format!("mnt2-{mode}"), &upper, extra);
        for (name, model) in &files {
            fsx(&["verify", m.point.join(name).to_str().unwrap(), model.to_str().unwrap()]);
        }
    }
}

#[test]
fn a_daemon_killed_mid_write_loses_no_fsynced_byte() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    let w = f.work.path();
    let upper = w.join("upper");
    // lamina's own overlay: its daemon writes (without passthrough) or hands the writes to
    // the kernel. Under kernel overlayfs writes never pass through the daemon.
    let m = f.mount_upper("mnt", &upper, &["--overlay", "fuse"]);
    // Records of 4 KiB appended to a new file and written over a copied-up lower file; after
    // every 8th an fsync of both, then the count is printed.
    let writer_src = r#"
import os, sys
a = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
b = os.open(sys.argv[2], os.O_WRONLY)
n = 0
while True:
    rec = (b"%08d" % n) * 512
    os.write(a, rec)
    os.pwrite(b, rec, (n % 64) * 4096)
    n += 1
    if n % 8 == 0:
        os.fsync(a); os.fsync(b)
        print(n, flush=True)
"#;
    let mut writer = python()
        .arg("-c")
        .arg(writer_src)
        .arg(m.point.join("journal"))
        .arg(m.point.join("usr/bin/tool"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut synced = 0u64;
    let started = Instant::now();
    while synced < 2000 && started.elapsed() < Duration::from_secs(60) {
        synced = lines.next().unwrap().unwrap().trim().parse().unwrap();
    }
    // SIGKILL mid-stream: the writer is still going.
    run(Command::new("kill").args(["-KILL", &m.pid.to_string()]));
    m.wait_daemon_gone("after SIGKILL");
    for l in lines.map_while(Result::ok) {
        synced = synced.max(l.trim().parse().unwrap_or(0));
    }
    let _ = writer.kill();
    let _ = writer.wait();
    m.unmount();
    drop(m);

    // Mounted again on the same upper: every fsync'ed record is there.
    let m = f.mount_upper("mnt2", &upper, &["--overlay", "fuse"]);
    let journal = std::fs::read(m.point.join("journal")).unwrap();
    assert!(
        journal.len() as u64 >= synced * 4096,
        "{} bytes after {synced} fsync'ed records",
        journal.len()
    );
    for (i, rec) in journal.chunks(4096).take(synced as usize).enumerate() {
        assert_eq!(rec, format!("{i:08}").repeat(512).as_bytes(), "record {i}");
    }
    let tool = std::fs::read(m.point.join("usr/bin/tool")).unwrap();
    let lower = std::fs::read(f.oracle.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.len(), lower.len().max(64 * 4096));
    // The slots rewritten by fsync'ed records hold the last such record (or a later one).
    for slot in 0..64u64.min(synced) {
        let last_synced = (0..synced).rev().find(|n| n % 64 == slot).unwrap();
        let got: u64 = std::str::from_utf8(&tool[(slot * 4096) as usize..][..8])
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            got >= last_synced && got % 64 == slot,
            "slot {slot}: record {got}, fsync'ed {last_synced}"
        );
    }
    // The upper is consistent: the kernel's overlayfs over it shows what lamina shows.
    let k = KernelOverlay::over_lamina_upper(&f.oracle, &upper, &w.join("k-mnt"));
    assert_same_tree(&m.point, &w.join("k-mnt"));
    drop(k);
}

#[test]
fn a_full_upper_gives_enospc_and_damages_nothing() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    for overlay in OVERLAYS {
        full_upper(&f, overlay);
    }
}

fn full_upper(f: &crate::support::mount::Fixture, overlay: &str) {
    let w = &f.work.path().join(overlay);
    let small = w.join("small");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _small = Unmount(small.clone());
    let upper = small.join("upper");
    let m = f.mount_upper(&format!("{overlay}/mnt"), &upper, &["--overlay", overlay]);
    let p = &m.point;
    std::fs::write(p.join("etc/keep"), b"small and safe").unwrap();
    // A new file larger than the upper's filesystem.
    let err = std::fs::write(p.join("huge"), vec![7u8; 4 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    // A copy-up that does not fit (usr/lib/big is 6 MiB): ENOSPC, the lower file unchanged.
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(p.join("usr/lib/big"))
        .map(drop)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    assert_eq!(
        std::fs::read(p.join("usr/lib/big")).unwrap(),
        std::fs::read(f.oracle.join("usr/lib/big")).unwrap()
    );
    assert!(!upper.join("upper/usr/lib/big").exists());
    assert_eq!(std::fs::read(p.join("etc/keep")).unwrap(), b"small and safe");
    // Space freed, writing works again.
    std::fs::remove_file(p.join("huge")).unwrap();
    std::fs::write(p.join("etc/after"), b"fits").unwrap();
    assert_eq!(std::fs::read(p.join("etc/after")).unwrap(), b"fits");
}

#[test]
fn a_copy_up_whose_chunks_cannot_be_fetched_fails_with_eio_and_changes_nothing() {
    let Some(mut f) = fixture(&["python3"]) else {
        return;
    };
    for overlay in OVERLAYS {
        let w = f.work.path().join(overlay);
        let upper = w.join("upper");
        let extra = [
            "--overlay",
            overlay,
            "--upper",
            upper.to_str().unwrap(),
            "--fetch-timeout",
            "2",
        ];
        // Its own cache: nothing of usr/lib/big is local.
        let m = Mounted::new(&f.converted, &w.join("mnt"), &w.join("cache"), &extra);
        f.registry.kill();
        let started = Instant::now();
        let err = std::fs::OpenOptions::new()
            .append(true)
            .open(m.point.join("usr/lib/big"))
            .map(drop)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "{overlay}: {err}");
        assert!(started.elapsed() < Duration::from_secs(60), "no deadline");
        assert!(!upper.join("upper/usr/lib/big").exists());
        // lamina stages copy-ups in tmp/, kernel overlayfs in work/work.
        for staging in ["tmp", "work/work"] {
            let left = std::fs::read_dir(upper.join(staging)).map_or(0, |d| d.count());
            assert_eq!(left, 0, "{overlay}: a partial copy-up was left in {staging}");
        }
        // The mount still serves, and with the registry back the file is the lower one.
        assert!(m.daemon_alive());
        f.registry.restart();
        let back = crate::support::poll::within(crate::support::poll::DEADLINE, || {
            std::fs::read(m.point.join("usr/lib/big")).ok()
        })
        .expect("the read works once the registry is back (after the fail-fast moment)");
        assert!(back == std::fs::read(f.oracle.join("usr/lib/big")).unwrap());
    }
}
