//! `lamina index`: gzip images made by umoci and pushed by skopeo become lazy without being
//! changed. The index is pushed next to the image, found by a mount with an empty cache, and
//! the mounted tree equals `umoci unpack`. python starts from such a mount, fetching a small
//! share of the image. A damaged index is ignored and the layer streams as before.

use std::process::Command;

use crate::fetching::python_and_more;
use crate::support::layers::{build_layout, push_and_convert, Step};
use crate::support::mount::{
    blob_gets_and_bytes, config_digest, evict_all, fixture, have_python, require_fuse, Mounted,
};
use crate::support::poll;
use crate::support::registry::TestRegistry;
use crate::support::tree::assert_same_tree;
use crate::support::{assert_ok, lamina, require_root, require_tools, run};

fn raw_manifest(image: &str) -> Vec<u8> {
    run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout
}

fn index(image: &str, cache: &std::path::Path, extra: &[&str]) -> String {
    let out = lamina()
        .arg("index")
        .args(extra)
        .arg(image)
        .env("LAMINA_CACHE_DIR", cache)
        .output()
        .unwrap();
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes of the blob GETs of `repo` in `log` (except those naming `except`) answered 206 (ranges) and 200 (whole blobs).
fn partial_and_whole_bytes(log: &str, repo: &str, except: &str) -> (u64, u64) {
    let (mut partial, mut whole) = (0, 0);
    let gets = log
        .lines()
        .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/")) && !l.contains(except));
    for l in gets {
        let mut status_and_size = l.split('"').nth(2).unwrap_or("").split_whitespace();
        let (status, size) = (
            status_and_size.next(),
            status_and_size.next().and_then(|s| s.parse::<u64>().ok()),
        );
        match (status, size) {
            (Some("206"), Some(n)) => partial += n,
            (Some("200"), Some(n)) => whole += n,
            _ => {}
        }
    }
    (partial, whole)
}

fn layer_status(m: &Mounted, cache: &std::path::Path) -> Vec<String> {
    let out = lamina()
        .args(["stats", "--json"])
        .arg(&m.point)
        .env("LAMINA_CACHE_DIR", cache)
        .output()
        .unwrap();
    assert_ok(&out);
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    state["layer_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_indexed_gzip_image_mounts_lazily_from_an_empty_cache_and_equals_umoci() {
    let Some(f) = fixture(&[]) else {
        return;
    };
    let w = f.work.path();
    let plain = f.converted.replace("/mnt-zc:", "/mnt-src:");
    let before = raw_manifest(&plain);
    let layers = serde_json::from_slice::<serde_json::Value>(&before).unwrap()["layers"]
        .as_array()
        .unwrap()
        .len();
    let out = index(&plain, &w.join("index-cache"), &["--span", "65536"]);
    assert_eq!(out.matches("pushed ").count(), layers, "{out}");
    assert!(out.contains("no referrers API here"), "{out}");
    assert_eq!(raw_manifest(&plain), before, "indexing changed the image");

    // An empty cache: the indexes come from the registry, every layer is served lazily.
    let cache = w.join("cache");
    let m = Mounted::new(&plain, &w.join("mnt"), &cache, &[]);
    assert_eq!(layer_status(&m, &cache), vec!["indexed".to_string(); layers]);
    assert_eq!(std::fs::read_dir(cache.join("gzindex")).unwrap().count(), layers);
    assert_same_tree(&m.point, &f.oracle);
    drop(m);

    // --verify rebuilds each index from its layer and compares.
    let out = index(&plain, &cache, &["--verify"]);
    assert_eq!(out.matches("the index matches the layer").count(), layers, "{out}");

    // A damaged index in the cache is not used: the registry's replaces it.
    let cache2 = w.join("cache2");
    std::fs::create_dir_all(cache2.join("gzindex")).unwrap();
    let mut good = Vec::new();
    for e in std::fs::read_dir(cache.join("gzindex")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        let mut damaged = data.clone();
        let at = damaged.len() - 40;
        damaged[at] ^= 0xff;
        std::fs::write(cache2.join("gzindex").join(e.file_name()), damaged).unwrap();
        good.push((e.file_name(), data));
    }
    let m = Mounted::new(&plain, &w.join("mnt2"), &cache2, &[]);
    assert_eq!(layer_status(&m, &cache2), vec!["indexed".to_string(); layers]);
    for (name, data) in good {
        assert!(
            std::fs::read(cache2.join("gzindex").join(name)).unwrap() == data,
            "the damaged index stayed"
        );
    }
    assert_same_tree(&m.point, &f.oracle);
    m.unmount();
    m.wait_daemon_gone("before gc");
    drop(m);

    // Wrong windows: every checkpoint's window flipped in the cache's indexes (their file
    // tables and checksums intact, so they load). Reads inflated through them fail — never a
    // wrong byte — and the indexes are refused: the next mount streams the layers, and is right.
    evict_all(&cache2);
    for e in std::fs::read_dir(cache2.join("gzindex")).unwrap() {
        let path = e.unwrap().path();
        let mut data = std::fs::read(&path).unwrap();
        let points = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
        let windows = u64::from_le_bytes(data[64..72].try_into().unwrap()) as usize;
        let from = 80 + points * 32;
        for b in &mut data[from..from + windows] {
            *b = !*b;
        }
        std::fs::write(&path, data).unwrap();
    }
    let m = Mounted::new(&plain, &w.join("mnt3"), &cache2, &[]);
    assert_eq!(layer_status(&m, &cache2), vec!["indexed".to_string(); layers]);
    let (mut failed, mut right) = (0, 0);
    for file in walk_files(&f.oracle) {
        let rel = file.strip_prefix(&f.oracle).unwrap();
        match std::fs::read(m.point.join(rel)) {
            Ok(got) => {
                assert!(
                    got == std::fs::read(&file).unwrap(),
                    "{}: wrong bytes served",
                    rel.display()
                );
                right += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(5), "{}: {e} (expected EIO)", rel.display());
                failed += 1;
            }
        }
    }
    assert!(
        failed > 0,
        "no read failed ({right} right): the flipped windows went unnoticed"
    );
    poll::until("an index to be refused", || {
        std::fs::read_dir(cache2.join("gzindex"))
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "refused"))
            .then_some(())
    });
    m.unmount();
    m.wait_daemon_gone("after the refusal");
    drop(m);
    let m = Mounted::new(&plain, &w.join("mnt4"), &cache2, &[]);
    assert!(
        layer_status(&m, &cache2).iter().any(|s| s == "streaming"),
        "a refused index was used again"
    );
    assert_same_tree(&m.point, &f.oracle);
}

/// Regular files under `root`, recursively (symlinks not followed).
fn walk_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn python_starts_from_an_indexed_gzip_image_fetching_a_small_share_of_it() {
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
    let src = format!("{}/pygz:t", registry.addr);
    push_and_convert(
        &umoci.layout,
        &src,
        &format!("{}/pygz:zc", registry.addr),
        &w.join("cc"),
    );
    let manifest: serde_json::Value = serde_json::from_slice(&raw_manifest(&src)).unwrap();
    let image_bytes: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let config = config_digest(&src);
    let (_, before) = blob_gets_and_bytes(&registry, "pygz", &config);
    let started = std::time::Instant::now();
    index(&src, &w.join("index-cache"), &[]);
    let indexing = started.elapsed();
    let (_, after_index) = blob_gets_and_bytes(&registry, "pygz", &config);
    let log_at = registry.log().len();

    let cache = w.join("cache");
    let started = std::time::Instant::now();
    let m = Mounted::new(&src, &w.join("mnt"), &cache, &[]);
    let out = run(Command::new("chroot").arg(&m.point).args([
        "/usr/bin/python3",
        "-c",
        "import json, email.parser, http.client; print(json.dumps({'ok': True}))",
    ]));
    let lazy = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"ok": true}"#);
    let (_, total) = blob_gets_and_bytes(&registry, "pygz", &config);
    let mount_log = registry.log()[log_at..].to_string();
    // Layer chunks come in Range answers (206); the index artifacts are whole blobs (200).
    let (fetched, artifacts) = partial_and_whole_bytes(&mount_log, "pygz", &config);
    assert_eq!(fetched + artifacts, total - after_index, "{mount_log}");
    eprintln!(
        "gzip image indexed in {:.2} s (read {} bytes); python3 from an empty cache in {:.2} s: {fetched} of {image_bytes} layer bytes ({:.1}%), and {artifacts} bytes of index artifacts",
        indexing.as_secs_f64(),
        after_index - before,
        lazy.as_secs_f64(),
        100.0 * fetched as f64 / image_bytes as f64,
    );
    assert_eq!(
        layer_status(&m, &cache),
        vec!["indexed".to_string(); manifest["layers"].as_array().unwrap().len()]
    );
    assert!(fetched * 2 < image_bytes, "fetched {fetched} of {image_bytes} bytes");
}
