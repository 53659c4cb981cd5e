//! The registry away (issue: edge-proof daemon): a warm image mounts by tag and by digest and
//! python runs, as `--pull` says (`missing` falls back to the cache's last resolution of the
//! tag, `always` refuses, `never` sends nothing); a read of an uncached chunk through a stalled
//! registry costs one request and one deadline, not two, and the mount recovers by itself; a
//! layer the registry refuses (404) fails at once, for good, while the other layers serve;
//! `lamina cache gc` never takes the chunks of a plain layer a live mount serves.

use std::path::Path;

use crate::fetching::fault_proxy;
use crate::profile::{python_image, python_in, record};
use crate::support::layers::noise;
use crate::support::mount::{evict_all, fixture, mount_command, require_fuse, Mounted};
use crate::support::registry::TestRegistry;
use crate::support::{lamina, poll, require_root, require_tools};

fn mount_fails(image: &str, point: &Path, cache: &Path, extra: &[&str]) -> String {
    let out = mount_command(image, point, cache, extra).output().unwrap();
    assert!(!out.status.success(), "mount {image} {extra:?} worked");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_warm_image_mounts_by_tag_and_digest_with_the_registry_away() {
    let Some(mut p) = python_image() else {
        return;
    };
    let w = p.work.path().to_path_buf();
    let cache = w.join("cache");
    record(&p, &cache, "mnt-warm");
    let digest = {
        let text =
            std::fs::read_to_string(cache.join("tags").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["digest"].as_str().unwrap().to_string()
    };
    p.registry.kill();
    let by_digest = format!("{}@{digest}", p.image.rsplit_once(':').unwrap().0);
    for (name, image, extra) in [
        ("tag-missing", p.image.as_str(), &[][..]),
        ("tag-never", p.image.as_str(), &["--pull", "never"][..]),
        ("digest", by_digest.as_str(), &[][..]),
        ("digest-never", by_digest.as_str(), &["--pull", "never"][..]),
    ] {
        let m = Mounted::new(image, &w.join(name), &cache, extra);
        let out = python_in(&m.point);
        assert!(
            out.status.success(),
            "{name}: python with the registry away: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m.unmount();
        m.wait_daemon_gone(name);
    }
    // `always` wants the registry's word on the tag.
    let err = mount_fails(&p.image, &w.join("always"), &cache, &["--pull", "always"]);
    assert!(err.contains("manifests/zc") || err.contains("connect"), "{err}");
    // `never` with an empty cache says what is missing, without trying the registry.
    p.registry.restart();
    let err = mount_fails(&p.image, &w.join("never-empty"), &w.join("empty"), &["--pull", "never"]);
    assert!(
        err.contains("not in the cache") && err.contains("--pull never"),
        "{err}"
    );
}

/// Blob GETs the fault proxy saw for paths holding `what`.
fn gets(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("GET ") && l.contains(what))
        .count()
}

#[test]
fn a_stalled_registry_costs_a_read_one_deadline_and_the_mount_recovers() {
    let Some(f) = fixture(&["python3"]) else {
        return;
    };
    let w = f.work.path();
    let cache = f.cache();
    // The indexes in the cache; then reads go through the proxy.
    let warm = f.mount("mnt-index", &[]);
    warm.unmount();
    warm.wait_daemon_gone("after indexing");
    let mode = w.join("mode");
    std::fs::write(&mode, "stall").unwrap();
    let log = w.join("proxy.log");
    let (_proxy, proxy_addr) = fault_proxy(&f.registry.addr, &mode, &log);
    let image = f.converted.replace(&f.registry.addr, &proxy_addr);
    let m = Mounted::new(
        &image,
        &w.join("mnt"),
        &cache,
        &["--fetch-timeout", "3", "--prefetch", "none"],
    );
    let err = std::fs::read(m.point.join("usr/lib/libx.so.2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    // The kernel's read-ahead read waited its deadline on one request; its own read that
    // follows failed at once instead of sending (and waiting on) another.
    assert_eq!(gets(&log, "/blobs/"), 1, "{}", std::fs::read_to_string(&log).unwrap());
    assert!(m.daemon_alive());
    // The registry back: the mount recovers by itself.
    std::fs::write(&mode, "pass").unwrap();
    let got = poll::within(poll::DEADLINE, || std::fs::read(m.point.join("usr/lib/libx.so.2")).ok())
        .expect("the read works once the registry answers");
    assert_eq!(got, noise(70_000, 3));
}

#[test]
fn a_refused_layer_fails_at_once_and_the_other_layers_serve() {
    if !require_tools(&["docker-registry", "skopeo", "python3"]) || !require_root() || !require_fuse() {
        return;
    }
    use crate::support::layout::{push_layers, Entry, Layer};
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let base = vec![
        Entry::Dir("base", 0o755),
        Entry::File("base/file", 0o644, b"in the base layer"),
    ];
    let top = vec![Entry::File("top-note", 0o600, b"from the top layer")];
    let image = push_layers(w, &registry.addr, "refused", &[Layer::gzip(&base), Layer::gzip(&top)]);
    let cache = w.join("cache");
    // Which blob is the base layer: the manifest's first layer.
    let out = lamina()
        .args(["inspect", &image])
        .env("LAMINA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let base_digest = text
        .lines()
        .find_map(|l| l.strip_prefix("layer"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no layer in {text}"))
        .to_string();
    assert!(base_digest.starts_with("sha256:"), "{text}");
    // The blob is refused when streamed whole (the footer probe at mount time still works:
    // the layer goes away once the mount is up).
    let mode = w.join("mode");
    std::fs::write(&mode, format!("status:404:{base_digest} range=-")).unwrap();
    let log = w.join("proxy.log");
    let (_proxy, proxy_addr) = fault_proxy(&registry.addr, &mode, &log);
    let m = Mounted::new(&image.replace(&registry.addr, &proxy_addr), &w.join("mnt"), &cache, &[]);
    // The top layer's files resolve and read; the base's are not there; the layer is
    // reported unavailable, and it was asked for once, not again and again.
    let note = poll::within(poll::DEADLINE, || std::fs::read(m.point.join("top-note")).ok()).expect("top-note");
    assert_eq!(note, b"from the top layer");
    assert!(!m.point.join("base/file").exists());
    let stats = m.stats_until(&cache, &[], |t| t.contains("unavailable"));
    assert!(stats.contains("404"), "{stats}");
    let asked = gets(&log, &base_digest);
    // Absence can only be shown by waiting: longer than the first two retries of old (0.5 s, 1 s).
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(gets(&log, &base_digest), asked, "the refused layer was asked for again");
    assert!(m.daemon_alive());
}

#[test]
fn gc_keeps_the_chunks_of_plain_layers_that_live_mounts_serve() {
    if !require_tools(&["docker-registry", "skopeo"]) || !require_root() || !require_fuse() {
        return;
    }
    use crate::support::layout::{push_layers, Entry, Layer};
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let contents: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("d/f{i:03}"), noise(5_000 + i * 37, i as u64)))
        .collect();
    let mut entries = vec![Entry::Dir("d", 0o755)];
    entries.extend(
        contents
            .iter()
            .map(|(p, b)| Entry::File(p.as_str(), 0o644, b.as_slice())),
    );
    let image = push_layers(w, &registry.addr, "plain", &[Layer::gzip(&entries)]);
    let cache = w.join("cache");
    let m = Mounted::new(&image, &w.join("mnt"), &cache, &[]);
    m.stats_until(&cache, &["--json"], |t| {
        t.contains("\"indexed\"") && !t.contains("streaming")
    });
    // Every chunk in the cache is this plain layer's: a quota of 0 would take them all.
    evict_all(&cache);
    for (path, want) in &contents {
        let got = std::fs::read(m.point.join(path)).unwrap_or_else(|e| panic!("{path} after gc: {e}"));
        assert!(&got == want, "{path} differs after gc");
    }
    // Once the mount is gone, the same chunks may go.
    m.unmount();
    m.wait_daemon_gone("after reading");
    evict_all(&cache);
    let chunks_left = walk(&cache.join("chunks")).iter().filter(|p| p.is_file()).count();
    assert_eq!(chunks_left, 0, "chunks kept after the mount ended");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
