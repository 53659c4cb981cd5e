//! `lamina index`: gzip images made by umoci and pushed by skopeo become lazy without being
//! changed. The index is pushed next to the image, found by a mount with an empty cache, and
//! the mounted tree equals `umoci unpack`. python starts from such a mount, fetching a small
//! share of the image. A damaged index is ignored and the layer streams as before; an index
//! whose windows give wrong bytes makes the layer fall back to streaming in the mount.

use std::process::Command;

use crate::fetching::python_and_more;
use crate::support::layers::{build_layout, push_and_convert, Step};
use crate::support::mount::{
    blob_gets_and_bytes, config_digest, evict_all, fixture, have_python, require_fuse, Mounted,
};
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

/// Bytes of the blob GETs of `repo` in `log`: of the blobs `layers` (the image's layers), and
/// of any other blob but `except` (the config): the index's table and windows.
fn layer_and_other_bytes(log: &str, repo: &str, layers: &[String], except: &str) -> (u64, u64) {
    let (mut of_layers, mut other) = (0, 0);
    let gets = log
        .lines()
        .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/")) && !l.contains(except));
    for l in gets {
        let size = l
            .split('"')
            .nth(2)
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok());
        match size {
            Some(n) if layers.iter().any(|d| l.contains(d.as_str())) => of_layers += n,
            Some(n) => other += n,
            None => {}
        }
    }
    (of_layers, other)
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
    // `inspect` finds the indexes in the registry and says so per layer.
    let out = lamina()
        .arg("inspect")
        .arg(&plain)
        .env("LAMINA_CACHE_DIR", w.join("inspect-cache"))
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("gzip index: ").count(), layers, "{text}");
    assert!(
        text.contains(&format!("{layers} of {layers} layers can be mounted lazily")),
        "{text}"
    );

    // An empty cache: the indexes come from the registry, every layer is served lazily.
    let cache = w.join("cache");
    let m = Mounted::new(&plain, &w.join("mnt"), &cache, &[]);
    assert_eq!(layer_status(&m, &cache), vec!["indexed".to_string(); layers]);
    let tables = std::fs::read_dir(cache.join("gzindex"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "lgzi"))
        .count();
    assert_eq!(tables, layers);
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
        if e.path().extension().is_none_or(|x| x != "lgzi") {
            continue;
        }
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

    // Wrong windows: every byte of the cache's windows files flipped. Each window is checked
    // against the sha256 the table gives, so they are fetched again from the registry, and
    // every file reads right.
    evict_all(&cache2);
    let mut flipped = 0;
    for e in std::fs::read_dir(cache2.join("gzindex")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "lgzw") {
            let data: Vec<u8> = std::fs::read(&path).unwrap().iter().map(|b| !b).collect();
            flipped += data.len();
            std::fs::write(&path, data).unwrap();
        }
    }
    assert!(flipped > 0, "no windows were kept in the cache");
    let config = config_digest(&plain);
    let (before_gets, _) = blob_gets_and_bytes(&f.registry, "mnt-src", &config);
    let log_at = f.registry.log().len();
    let m = Mounted::new(&plain, &w.join("mnt3"), &cache2, &[]);
    assert_eq!(layer_status(&m, &cache2), vec!["indexed".to_string(); layers]);
    for file in walk_files(&f.oracle) {
        let rel = file.strip_prefix(&f.oracle).unwrap();
        let got = std::fs::read(m.point.join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        assert!(
            got == std::fs::read(&file).unwrap(),
            "{}: wrong bytes served",
            rel.display()
        );
    }
    let (after_gets, _) = blob_gets_and_bytes(&f.registry, "mnt-src", &config);
    assert!(after_gets > before_gets);
    let windows_blobs: Vec<String> = std::fs::read_dir(cache2.join("gzindex"))
        .unwrap()
        .filter_map(|e| {
            let data = std::fs::read(e.unwrap().path()).ok()?;
            (data.len() > 96 && &data[..8] == b"LAMGZI02").then(|| hex(&data[64..96]))
        })
        .collect();
    let refetched = f.registry.log()[log_at..]
        .lines()
        .filter(|l| l.contains("\"GET /v2/mnt-src/blobs/") && windows_blobs.iter().any(|d| l.contains(d.as_str())))
        .count();
    assert!(refetched > 0, "the damaged windows were not fetched again");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    let indexed = index(&src, &w.join("index-cache"), &[]);
    let indexing = started.elapsed();
    eprint!("{indexed}");
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
    let layer_digests: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let (fetched, artifacts) = layer_and_other_bytes(&mount_log, "pygz", &layer_digests, &config);
    assert_eq!(fetched + artifacts, total - after_index, "{mount_log}");
    eprintln!(
        "gzip image indexed in {:.2} s (read {} bytes); python3 from an empty cache in {:.2} s: {fetched} of {image_bytes} layer bytes ({:.1}%), and {artifacts} bytes of index (tables and the windows used)",
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

/// Push the image `layout:t` to `addr/repo:t` blob by blob over the registry API, layers as
/// they are (skopeo would compress uncompressed layers on the way).
fn push_as_is(layout: &std::path::Path, addr: &str, repo: &str) {
    let script = r#"
import hashlib, json, sys, urllib.request
layout, addr, repo = sys.argv[1:4]
index = json.load(open(f"{layout}/index.json"))
desc = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "t"][0]
blob = lambda d: open(f"{layout}/blobs/sha256/{d[7:]}", "rb").read()
manifest = blob(desc["digest"])
m = json.loads(manifest)
for d in [m["config"]] + m["layers"]:
    r = urllib.request.urlopen(urllib.request.Request(f"http://{addr}/v2/{repo}/blobs/uploads/", method="POST"))
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{addr}{loc}"
    sep = "&" if "?" in loc else "?"
    urllib.request.urlopen(urllib.request.Request(f"{loc}{sep}digest={d['digest']}", data=blob(d["digest"]), method="PUT",
        headers={"Content-Type": "application/octet-stream"}))
urllib.request.urlopen(urllib.request.Request(f"http://{addr}/v2/{repo}/manifests/t", data=manifest, method="PUT",
    headers={"Content-Type": m["mediaType"]}))
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(layout)
        .arg(addr)
        .arg(repo));
}

#[test]
fn an_uncompressed_layer_is_indexed_and_read_where_its_bytes_are() {
    use crate::support::layout::{tar_bytes, Entry, Layer, Layout};
    if !require_tools(&["docker-registry", "umoci", "skopeo"]) || !require_root() || !require_fuse() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let big = crate::support::layers::noise(3 << 20, 7);
    let lower = Layer::plain(tar_bytes(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/small", 0o644, b"small file"),
        Entry::File("etc/gone", 0o600, b"whited out above"),
        Entry::File("big", 0o644, &big),
        Entry::Link("big-again", "big"),
        Entry::Symlink("link", "etc/small"),
        Entry::Fifo("fifo"),
    ]));
    let upper = Layer::plain(tar_bytes(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/.wh.gone", 0o644, b""),
        Entry::File("etc/new", 0o644, b"from the upper layer"),
    ]));
    let mut layout = Layout::create(&w.join("layout"));
    let desc = layout.image(&[lower, upper], "amd64");
    layout.tag("t", desc);
    push_as_is(&layout.dir, &registry.addr, "tarlayers");
    let image = format!("{}/tarlayers:t", registry.addr);
    let manifest: serde_json::Value = serde_json::from_slice(&raw_manifest(&image)).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(layers
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar"));
    let image_bytes: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();

    let out = index(&image, &w.join("index-cache"), &[]);
    assert_eq!(out.matches("pushed ").count(), 2, "{out}");
    let config = config_digest(&image);
    let (_, before) = blob_gets_and_bytes(&registry, "tarlayers", &config);
    let cache = w.join("cache");
    let m = Mounted::new(&image, &w.join("mnt"), &cache, &[]);
    assert_eq!(layer_status(&m, &cache), vec!["indexed".to_string(); 2]);
    // One small file: its bytes, where they are in the blob (and the tables), not the layer.
    assert_eq!(std::fs::read(m.point.join("etc/small")).unwrap(), b"small file");
    let (_, after) = blob_gets_and_bytes(&registry, "tarlayers", &config);
    assert!(
        after - before < image_bytes / 4,
        "{} of {image_bytes} bytes",
        after - before
    );
    let oracle = crate::convert::skopeo_gzip_unpack(&image, w, "oracle");
    assert_same_tree(&m.point, &oracle);
}

/// A layer of text files whose deflate stream refers back a lot: 48 files of 96 KiB.
fn text_files(rootfs: &std::path::Path) {
    let dir = rootfs.join("text");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = 1u64;
    for f in 0..48 {
        let mut text = String::new();
        while text.len() < 96 << 10 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            text.push_str(&format!(
                "entry {} of file {f}: value {} ",
                (s >> 40) % 4099,
                (s >> 20) % 97
            ));
        }
        std::fs::write(dir.join(format!("f{f:02}.txt")), text).unwrap();
    }
}

/// Rewrite the gzip indexes in `cache` as an index made wrong would be: every window's bytes
/// inverted, the table's sha256s made to match them (so the cache takes them). Returns how
/// many windows were changed.
fn make_windows_wrong(cache: &std::path::Path, manifest: &serde_json::Value) -> usize {
    use lamina::format::gzip_index::{decode, encode, open_window};
    let mut changed = 0;
    for l in manifest["layers"].as_array().unwrap() {
        let layer: lamina::digest::Digest = l["digest"].as_str().unwrap().parse().unwrap();
        let table_path = cache.join("gzindex").join(format!("{}.lgzi", layer.hex()));
        let windows_path = table_path.with_extension("lgzw");
        let mut gz = decode(
            &std::fs::read(&table_path).unwrap(),
            &layer,
            l["size"].as_u64().unwrap(),
        )
        .unwrap();
        let old = std::fs::read(&windows_path).unwrap();
        let mut blob = Vec::new();
        for p in &mut gz.points {
            let frame = &old[p.window_at as usize..(p.window_at + u64::from(p.window_zlen)) as usize];
            let window: Vec<u8> = open_window(p, frame).unwrap().iter().map(|b| !b).collect();
            changed += usize::from(!window.is_empty());
            let frame = zstd::bulk::compress(&window, 3).unwrap();
            p.window_at = blob.len() as u64;
            p.window_zlen = frame.len() as u32;
            p.window_sha256 = lamina::digest::Digest::of(&window).bytes();
            blob.extend_from_slice(&frame);
        }
        gz.windows = lamina::digest::Digest::of(&blob);
        gz.windows_size = blob.len() as u64;
        std::fs::write(&windows_path, blob).unwrap();
        std::fs::write(&table_path, encode(&gz)).unwrap();
    }
    changed
}

#[test]
fn a_gzip_index_with_wrong_windows_falls_back_to_streaming_and_serves_right_bytes() {
    if !require_tools(&["docker-registry", "umoci", "skopeo"]) || !require_root() || !require_fuse() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = crate::support::layers::build_image(w, &[Step::Repack(text_files)]);
    let image = format!("{}/wrongidx:t", registry.addr);
    crate::support::image::skopeo_push(&umoci.layout, "t", &image, None, false);
    let manifest: serde_json::Value = serde_json::from_slice(&raw_manifest(&image)).unwrap();
    let cache = w.join("cache");
    index(&image, &cache, &["--no-push"]);
    assert!(
        make_windows_wrong(&cache, &manifest) > 2,
        "too few windows to make wrong"
    );

    let m = Mounted::new(&image, &w.join("mnt"), &cache, &[]);
    assert!(layer_status(&m, &cache).iter().all(|s| s == "indexed"));
    // Every file reads right: the chunks the wrong windows spoil fail their sha256, and after
    // the second the layer streams and the reads are answered from what it stores.
    assert_same_tree(&m.point, &w.join("oracle/rootfs"));
    let logs: String = std::fs::read_dir(cache.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("the gzip index gives wrong bytes: streaming the layer instead"),
        "no fallback in the logs:\n{logs}"
    );
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let refused = cache.join("gzindex").join(format!("{layer}.refused"));
    assert!(refused.exists(), "the wrong index was not refused");
    m.unmount();
    m.wait_daemon_gone("before the second mount");
    drop(m);

    // The next mount does not use the refused index: the layer streams from the start.
    evict_all(&cache);
    let m = Mounted::new(&image, &w.join("mnt2"), &cache, &[]);
    assert_same_tree(&m.point, &w.join("oracle/rootfs"));
    assert!(layer_status(&m, &cache).iter().all(|s| s != "indexed"));
}
