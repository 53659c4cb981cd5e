//! What a lazy mount fetches, and when: concurrent readers share fetches and `lamina stats`
//! counts exactly what the registry served; a dead or faulty registry gives EIO at the
//! deadline, never wrong bytes, and the mount recovers; plain layers serve files while they
//! stream; python starts from a lazy mount fetching a small share of the image.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::layers::{build_layout, noise, push_and_convert, Step};
use crate::support::mount::{
    add_python, blob_gets, blob_gets_and_bytes, config_digest, fixture, have_python, require_fuse, stats_matching_log,
    Mounted,
};
use crate::support::registry::TestRegistry;
use crate::support::{require_root, require_tools, run, start_helper};

#[test]
fn concurrent_readers_share_fetches_and_a_dead_registry_gives_eio() {
    let Some(mut f) = fixture(&[]) else {
        return;
    };
    let config = config_digest(&f.converted);
    let m = f.mount("mnt", &["--fetch-timeout", "3"]);
    let big = m.point.join("usr/lib/big");
    let (mounted, mounted_bytes) = blob_gets_and_bytes(&f.registry, "mnt-zc", &config);
    let (before, bytes_before) = blob_gets_and_bytes(&f.registry, "mnt-zc", &config);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let p = big.clone();
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    let want = noise(6 << 20, 42);
    for r in readers {
        assert!(r.join().unwrap() == want, "a reader got wrong bytes");
    }
    let (after, bytes_after) = blob_gets_and_bytes(&f.registry, "mnt-zc", &config);
    let (requests, bytes) = (after - before, bytes_after - bytes_before);
    // Each chunk once: the 6 MiB of noise (incompressible) crossed the wire once, not eight
    // times, in merged requests (one request per 128 KiB chunk would be 48 or more).
    assert!(
        (6 << 20..8 << 20).contains(&bytes),
        "{bytes} bytes fetched for one 6 MiB file read by 8 readers"
    );
    assert!(
        (2..24).contains(&requests),
        "{requests} range requests for one 6 MiB file"
    );
    // `lamina stats` counts what the registry's log shows (TOC reads at mount time aside).
    stats_matching_log(&m, &f.cache(), &f.registry, "mnt-zc", &config, (mounted, mounted_bytes));

    // Registry gone: a file not yet fetched fails with EIO near the deadline; cached data is served.
    f.registry.kill();
    let started = Instant::now();
    let err = std::fs::read(m.point.join("usr/lib/libx.so.2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "EIO took {:?}",
        started.elapsed()
    );
    assert!(std::fs::read(&big).unwrap() == want);
    // Back again: the same read works (reads fail fast for a moment after an outage, so
    // poll), the daemon never left.
    f.registry.restart();
    let back = crate::support::poll::within(crate::support::poll::DEADLINE, || {
        std::fs::read(m.point.join("usr/lib/libx.so.2")).ok()
    })
    .expect("the read works once the registry is back");
    assert_eq!(back, noise(70_000, 3));
    assert!(m.daemon_alive());
}

/// The fault proxy in front of `upstream`, reading its mode from the file `mode`.
pub(crate) fn fault_proxy(upstream: &str, mode: &Path, log: &Path) -> (crate::support::KillOnDrop, String) {
    start_helper("fault_proxy.py", &[upstream, mode.to_str().unwrap()], log)
}

#[test]
fn plain_layers_serve_files_before_they_finish_streaming() {
    if !require_tools(&["docker-registry", "skopeo", "python3"]) || !require_root() || !require_fuse() {
        return;
    }
    use crate::support::layout::{push_layers, Entry, Layer};
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Incompressible, so the gzip blob is as large as the file and the hold lands before it.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..6 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let base = vec![
        Entry::Dir("early", 0o755),
        Entry::File("early/hello", 0o644, b"served before the layer ends"),
        Entry::Dir("late", 0o755),
        Entry::File("late/big", 0o644, &big),
    ];
    let top = vec![Entry::File("top-note", 0o600, b"from the upper layer")];
    let direct = push_layers(w, &registry.addr, "streamed", &[Layer::gzip(&base), Layer::gzip(&top)]);

    // The proxy sends the first 256 KiB of each blob, then holds the rest: the big base layer
    // cannot finish streaming until the test lets it.
    let mode = w.join("mode");
    std::fs::write(&mode, "hold:262144").unwrap();
    let (_proxy, proxy_addr) = fault_proxy(&registry.addr, &mode, &w.join("proxy.log"));
    let image = direct.replace(&registry.addr, &proxy_addr);
    let cache = w.join("cache");
    let m = Mounted::new(&image, &w.join("mnt"), &cache, &["--fetch-timeout", "60"]);
    assert_eq!(
        std::fs::read(m.point.join("early/hello")).unwrap(),
        b"served before the layer ends"
    );
    // The base layer is still streaming (the proxy holds it).
    m.stats_until(&cache, &[], |t| t.contains("streaming"));
    let log = std::fs::read_to_string(w.join("proxy.log")).unwrap();
    assert!(log.contains("HOLD"), "the proxy never held a blob: {log}");

    // A file past the hold waits for the stream (not for an error), and arrives once it goes on.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = {
        let point = m.point.clone();
        std::thread::spawn(move || {
            tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
            std::fs::read(point.join("late/big"))
        })
    };
    // The reader is blocked on the mount (in openat, a stat or read: the name or its bytes
    // wait for the stream) while the stream is held.
    let tid = tid_rx.recv().unwrap();
    let syscall = crate::support::poll::until("the reader to block on the mount", || {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let nr = s.split_whitespace().next().and_then(|n| n.parse::<u32>().ok());
        // x86_64: read, newfstatat, openat, statx (elsewhere: any syscall).
        nr.filter(|n| !cfg!(target_arch = "x86_64") || [0, 262, 257, 332].contains(n))
    });
    eprintln!("the reader waits in syscall {syscall}");
    assert!(!reader.is_finished(), "a file the stream has not reached was served");
    std::fs::write(&mode, "pass").unwrap();
    let got = reader.join().unwrap().unwrap();
    assert!(got == big, "late/big differs after streaming");
    // Layers above a streaming one are merged once it is whole.
    assert_eq!(
        std::fs::read(m.point.join("top-note")).unwrap(),
        b"from the upper layer"
    );
    let text = m.stats_until(&cache, &[], |t| !t.contains("streaming"));
    assert!(!text.contains("failed"), "{text}");
    assert_eq!(crate::support::dir_names(&m.point), ["early", "late", "top-note"]);
    drop(m);

    // The stream left the layer indexed and its bytes cached: the next mount needs no blob.
    let config = config_digest(&direct);
    let before = blob_gets(&registry, "streamed", &config);
    let m = Mounted::new(&direct, &w.join("mnt2"), &cache, &[]);
    assert!(std::fs::read(m.point.join("late/big")).unwrap() == big);
    assert_eq!(
        blob_gets(&registry, "streamed", &config),
        before,
        "a warm mount fetched blobs"
    );
}

#[test]
fn faults_never_give_wrong_bytes_hangs_or_crashes() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    let w = f.work.path();
    let mode = w.join("fault-mode");
    std::fs::write(&mode, "pass").unwrap();
    let (_proxy, proxy_addr) = fault_proxy(&f.registry.addr, &mode, &w.join("proxy.log"));
    let image = f.converted.replace(&f.registry.addr, &proxy_addr);
    // No read-ahead across files: each file below must still be uncached when its fault is on
    // (prefetch under faults has a test of its own).
    let m = Mounted::new(
        &image,
        &w.join("mnt"),
        &w.join("cache"),
        &["--fetch-timeout", "3", "--prefetch", "none"],
    );
    let files = [
        "etc/chmod-me",
        "usr/bin/tool",
        "usr/lib/libx.so.1",
        "usr/bin/suid",
        "home/user/notes",
        "opt/replace/c",
        "usr/lib/libx.so.2",
    ];
    let modes = ["drop", "stall", "truncate", "flip", "500", "503", "drop"];
    for (file, fault) in files.iter().zip(modes) {
        std::fs::write(&mode, fault).unwrap();
        let started = Instant::now();
        let got = std::fs::read(m.point.join(file));
        let took = started.elapsed();
        let err = got.expect_err(&format!("{fault}: reading {file} through a faulty registry succeeded"));
        assert_eq!(err.raw_os_error(), Some(5), "{fault}: {err}");
        assert!(took < Duration::from_secs(20), "{fault}: EIO took {took:?}");
        assert!(m.daemon_alive(), "{fault}: the daemon died");
        // The fault gone, the same file reads right again (a request of the faulty time may
        // still be ending, so allow a few seconds): nothing wrong was kept.
        std::fs::write(&mode, "pass").unwrap();
        let expected = std::fs::read(f.oracle.join(file)).unwrap();
        let back = Instant::now() + Duration::from_secs(15);
        let got = loop {
            match std::fs::read(m.point.join(file)) {
                Ok(data) => break data,
                Err(e) if Instant::now() < back => eprintln!("{fault}: read after recovery failed ({e}); again"),
                Err(e) => panic!("{fault}: {file} still unreadable 15 s after the fault ended: {e}"),
            }
        };
        assert!(got == expected, "{fault}: wrong bytes after recovery");
    }
    let log = std::fs::read_to_string(w.join("proxy.log")).unwrap();
    for fault in ["drop", "stall", "truncate", "flip", "500", "503"] {
        assert!(
            log.contains(&format!("FAULT {fault} ")),
            "the proxy never injected {fault}:\n{log}"
        );
    }
    drop(m);
}

/// A Debian-built python3 with its shared libraries and its whole standard library, and what
/// else a Debian image carries that python's start-up does not touch: the gconv modules of
/// libc6 and perl-base, both essential packages.
pub(crate) fn python_and_more(rootfs: &Path) {
    add_python(rootfs);
    for extra in ["/usr/lib/x86_64-linux-gnu/gconv", "/usr/lib/x86_64-linux-gnu/perl-base"] {
        if Path::new(extra).exists() {
            run(Command::new("cp")
                .arg("-a")
                .arg(extra)
                .arg(rootfs.join("usr/lib/x86_64-linux-gnu/")));
        }
    }
}

#[test]
fn python_starts_from_a_lazy_mount_fetching_a_small_share_of_the_image() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "ldd", "cp"]) || !require_root() || !require_fuse() {
        return;
    }
    if !have_python() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_layout(w, &[Step::Repack(python_and_more)]);
    let src = format!("{}/python:t", registry.addr);
    let lazy = format!("{}/python:zc", registry.addr);
    push_and_convert(&umoci.layout, &src, &lazy, &w.join("convert-cache"));
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{lazy}")))
    .stdout;
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let image_bytes: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();

    let cache = w.join("cache");
    let m = Mounted::new(&lazy, &w.join("mnt"), &cache, &[]);
    let config = config_digest(&lazy);
    let mounted = blob_gets_and_bytes(&registry, "python", &config);
    let out = run(Command::new("chroot").arg(&m.point).args([
        "/usr/bin/python3",
        "-c",
        "import json, email.parser, http.client; print(json.dumps({'ok': True}))",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"ok": true}"#);
    let state = stats_matching_log(&m, &cache, &registry, "python", &config, mounted);
    let fetched = state["stats"]["fetched_bytes"].as_u64().unwrap();
    eprintln!(
        "python3 start-up from the lazy mount fetched {fetched} of {image_bytes} bytes ({:.1}%)",
        100.0 * fetched as f64 / image_bytes as f64
    );
    // A small image (python and little else): the realistic figure is the demo's Debian image.
    assert!(
        fetched > 0 && fetched * 2 < image_bytes,
        "fetched {fetched} of {image_bytes} bytes"
    );
}

/// A package: eight small modules in one directory, then a file in another directory.
fn package_layer() -> Vec<u8> {
    use crate::support::layout::{tar_bytes, Entry};
    let modules: Vec<(String, Vec<u8>)> = (0..8).map(|i| (format!("pkg/m{i}.py"), noise(3000, 100 + i))).collect();
    let other = noise(3000, 99);
    let mut entries = vec![Entry::Dir("pkg", 0o755)];
    entries.extend(modules.iter().map(|(name, data)| Entry::File(name, 0o644, data)));
    entries.extend([Entry::Dir("other", 0o755), Entry::File("other/x.py", 0o644, &other)]);
    tar_bytes(&entries)
}

#[test]
fn a_missed_small_file_brings_the_next_files_of_its_directory_in_the_same_request() {
    if !require_tools(&["docker-registry", "umoci", "skopeo"]) || !require_root() || !require_fuse() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_layout(w, &[Step::Tar(package_layer)]);
    let image = format!("{}/pkg-zc:t", registry.addr);
    push_and_convert(
        &umoci.layout,
        &format!("{}/pkg-src:t", registry.addr),
        &image,
        &w.join("convert-cache"),
    );
    let config = config_digest(&image);
    let gets = || blob_gets(&registry, "pkg-zc", &config);
    let read = |m: &Mounted, name: &str| std::fs::read(m.point.join(name)).unwrap();

    // The first module's miss fetches the modules after it, in the same request.
    let m = Mounted::new(&image, &w.join("mnt"), &w.join("cache"), &[]);
    let mounted = gets();
    assert!(read(&m, "pkg/m0.py") == noise(3000, 100));
    let first = gets();
    assert_eq!(first, mounted + 1, "one request for the first module");
    for i in 1..4 {
        assert!(read(&m, &format!("pkg/m{i}.py")) == noise(3000, 100 + i), "pkg/m{i}.py");
    }
    assert_eq!(gets(), first, "the next modules came with the first one's request");
    // A file of another directory is no neighbour: it costs a request of its own.
    assert!(read(&m, "other/x.py") == noise(3000, 99));
    assert_eq!(gets(), first + 1, "other/x.py");
    drop(m);

    // With `--prefetch none`, every module is a request of its own.
    let m = Mounted::new(&image, &w.join("mnt2"), &w.join("cache2"), &["--prefetch", "none"]);
    let mounted = gets();
    assert!(read(&m, "pkg/m0.py") == noise(3000, 100));
    assert!(read(&m, "pkg/m1.py") == noise(3000, 101));
    assert_eq!(gets(), mounted + 2, "two modules without neighbours");
}
