//! `lamina mount`: real FUSE mounts of real images (zstd:chunked by lamina and by skopeo,
//! plain gzip), compared entry by entry with `umoci unpack`; warm remounts and other images
//! with the same layers fetch nothing; a killed daemon's mount is cleared; hostile images
//! never reach outside. Fetching under load and faults: `fetching.rs`.

use std::process::Command;
use std::time::Duration;

use crate::support::mount::{blob_gets, config_digest, evict_all, fixture, require_fuse, Mounted};
use crate::support::registry::TestRegistry;
use crate::support::tree::assert_same_tree;
use crate::support::{assert_ok, lamina, require_root, require_tools, run};

#[test]
fn mounted_tree_equals_umoci_unpack_and_warm_mounts_fetch_nothing() {
    let Some(f) = fixture(&[]) else {
        return;
    };
    let w = f.work.path();
    let cache = f.cache();
    let config = config_digest(&f.converted);
    let m = f.mount("mnt", &[]);
    // A file opened before its bytes were local, and opened again after one read made them
    // local while the first handle is still open: the second open must not ask for passthrough
    // (the kernel refuses it with EIO while the inode is open through the page cache).
    {
        use std::io::Read;
        let path = m.point.join("usr/bin/tool");
        let expected = std::fs::read(f.oracle.join("usr/bin/tool")).unwrap();
        let mut first = std::fs::File::open(&path).unwrap();
        let mut got = Vec::new();
        first.read_to_end(&mut got).unwrap();
        assert_eq!(got, expected);
        for _ in 0..50 {
            let mut again = std::fs::File::open(&path).expect("a second open while the first is open");
            got.clear();
            again.read_to_end(&mut got).unwrap();
            assert_eq!(got, expected);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_same_tree(&m.point, &f.oracle);
    let cold = blob_gets(&f.registry, "mnt-zc", &config);
    assert!(cold > 0);
    m.unmount();
    m.wait_daemon_gone("after umount");
    drop(m);

    // Warm: same cache, a second mount reads every byte again without one blob request.
    let m = f.mount("mnt2", &[]);
    assert_same_tree(&m.point, &f.oracle);
    assert_eq!(
        blob_gets(&f.registry, "mnt-zc", &config),
        cold,
        "a warm mount fetched blob bytes"
    );
    drop(m);

    // Another image (another repository) with the same layers: its chunks are already local.
    let other = format!("{}/mnt-other:t", f.registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}", f.converted))
        .arg(format!("docker://{other}")));
    let m = Mounted::new(&other, &w.join("mnt3"), &cache, &[]);
    assert_same_tree(&m.point, &f.oracle);
    assert_eq!(
        blob_gets(&f.registry, "mnt-other", &config),
        0,
        "shared chunks were fetched again"
    );

    // Evicting everything under a live mount: reads still give the right bytes (re-fetched).
    let out = evict_all(&cache);
    assert!(String::from_utf8_lossy(&out.stdout).contains("evicted"), "{out:?}");
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_same_tree(&m.point, &f.oracle);
}

#[test]
fn skopeo_written_zstd_chunked_mounts() {
    let Some(f) = fixture(&["unshare"]) else {
        return;
    };
    let w = f.work.path();
    let image = format!("{}/mnt-skopeo:t", f.registry.addr);
    run(Command::new("unshare").args(["-m", "sh", "-c"]).arg(format!(
        "mkdir -p /var/lib/containers/cache && mount -t tmpfs none /var/lib/containers/cache && \
         exec skopeo copy --quiet --dest-tls-verify=false --dest-compress-format zstd:chunked oci:{}:t docker://{image}",
        f.layout.display()
    )));
    let m = Mounted::new(&image, &w.join("mnt"), &w.join("cache"), &[]);
    assert_same_tree(&m.point, &f.oracle);
}

#[test]
fn a_killed_daemon_is_cleared_by_umount_and_remounts_from_cache() {
    let Some(f) = fixture(&[]) else {
        return;
    };
    let m = f.mount("mnt", &[]);
    assert_same_tree(&m.point, &f.oracle);
    run(Command::new("kill").args(["-KILL", &m.pid.to_string()]));
    m.wait_daemon_gone("after SIGKILL");
    let err = std::fs::read_dir(&m.point).map(|_| ()).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(107 | 103)),
        "expected ENOTCONN or ECONNABORTED from a dead mount: {err}"
    );
    assert_ok(&lamina().arg("umount").arg(&m.point).output().unwrap());
    drop(m);
    let m = f.mount("mnt", &[]);
    assert_same_tree(&m.point, &f.oracle);
}

#[test]
fn plain_gzip_images_mount_and_then_come_from_the_cache() {
    let Some(f) = fixture(&[]) else {
        return;
    };
    let w = f.work.path();
    let plain = f.converted.replace("/mnt-zc:", "/mnt-src:");
    let config = config_digest(&plain);
    let cache = w.join("cache");
    let m = Mounted::new(&plain, &w.join("mnt"), &cache, &[]);
    assert_same_tree(&m.point, &f.oracle);
    let first = blob_gets(&f.registry, "mnt-src", &config);
    drop(m);
    let m = Mounted::new(&plain, &w.join("mnt2"), &cache, &[]);
    assert_same_tree(&m.point, &f.oracle);
    assert_eq!(
        blob_gets(&f.registry, "mnt-src", &config),
        first,
        "a second mount of a plain image fetched blob bytes"
    );
    // Gone (a live mount's plain-layer chunks are pinned), the chunks leave the cache (the
    // indexes stay): the layers are streamed again.
    m.unmount();
    m.wait_daemon_gone("before gc");
    drop(m);
    evict_all(&cache);
    let m = Mounted::new(&plain, &w.join("mnt3"), &cache, &[]);
    assert_same_tree(&m.point, &f.oracle);
    assert!(
        blob_gets(&f.registry, "mnt-src", &config) > first,
        "evicted chunks of a plain layer were not fetched again"
    );
}

#[test]
fn hostile_images_never_reach_outside_through_the_mount() {
    if !require_tools(&["docker-registry", "skopeo"]) || !require_root() || !require_fuse() {
        return;
    }
    use crate::support::layout::{push_layers, Entry, Layer};
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let canary = w.join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("secret"), b"host secret").unwrap();
    let c = canary.to_str().unwrap();
    let secret = format!("{c}/secret");
    let push = |name: &str, layers: Vec<Vec<Entry<'_>>>| {
        let built: Vec<Layer> = layers.iter().map(|l| Layer::gzip(l)).collect();
        push_layers(w, &registry.addr, &format!("hostile-{name}"), &built)
    };
    let image = push(
        "links",
        vec![
            vec![Entry::Symlink("evil", c), Entry::Symlink("lnk", &secret)],
            vec![Entry::File("evil/planted", 0o644, b"inside"), Entry::Link("hl", "lnk")],
        ],
    );
    let m = Mounted::new(&image, &w.join("mnt"), &w.join("cache"), &[]);
    // The lower symlink was replaced by a directory, not followed.
    assert!(m.point.join("evil").is_dir() && !m.point.join("evil").is_symlink());
    assert_eq!(std::fs::read(m.point.join("evil/planted")).unwrap(), b"inside");
    // Symlinks are served as text; the daemon never opens what they name.
    assert_eq!(
        std::fs::read_link(m.point.join("lnk")).unwrap().to_str().unwrap(),
        secret
    );
    assert!(std::fs::symlink_metadata(m.point.join("hl"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(crate::support::dir_names(&canary), ["secret"]);
    assert_eq!(std::fs::read(canary.join("secret")).unwrap(), b"host secret");
    drop(m);

    let indexes_before = std::fs::read_dir(w.join("cache/indexes")).unwrap().count();
    // `..` in a plain layer (found while it streams, after the mount is up): the layer fails
    // for good, the mount serves nothing of it (EIO, not an empty or partial tree), `lamina
    // stats` names the entry, and nothing is written outside.
    let image = push(
        "dotdot",
        vec![vec![
            Entry::File("fine", 0o644, b"x"),
            Entry::File("../../escape", 0o644, b"x"),
        ]],
    );
    let m = Mounted::new(&image, &w.join("mnt2"), &w.join("cache"), &[]);
    let err = std::fs::read_dir(&m.point)
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "listing a failed layer: {err}");
    let text = m.stats_until(&w.join("cache"), &[], |t| t.contains("failed"));
    assert!(text.contains("failed") && text.contains("../../escape"), "{text}");
    assert!(m.daemon_alive());
    assert!(!w.join("escape").exists() && !std::path::Path::new("/escape").exists());
    drop(m);
    let indexes = || std::fs::read_dir(w.join("cache/indexes")).unwrap().count();
    assert_eq!(indexes(), indexes_before, "an index was kept for a layer that failed");
}
