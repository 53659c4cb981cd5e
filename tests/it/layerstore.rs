//! `lamina store` under Debian's podman: an additional layer store on a private storage.conf.
//! `podman pull` of a zstd:chunked image takes its layers from the store (a small share of the
//! image fetched), `podman image mount` shows the image as `umoci unpack` does and python runs
//! from it, a second image on the same base fetches nothing more of it, `podman push` of the
//! image gives back its layer digests, hostile names are refused, and an unchanged gzip image
//! with a gzip index (`lamina index`) is taken from the store too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::fetching::python_and_more;
use crate::support::layers::{base_layer, build_image, changes_layer, opaque_layer_tar, push_and_convert, Step};
use crate::support::mount::{have_python, require_fuse};
use crate::support::registry::TestRegistry;
use crate::support::tree::assert_same_tree;
use crate::support::{assert_ok, lamina, poll, require_root, require_tools, run};

/// podman with its own graph root, run root, registries.conf and the store.
struct Podman {
    dir: PathBuf,
    store: PathBuf,
}

impl Podman {
    fn new(w: &Path, registry: &str, store: &Path) -> Podman {
        let dir = w.join("podman");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\nadditionallayerstores = [\"{}:ref\"]\n",
                dir.join("graph").display(),
                dir.join("run").display(),
                store.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("registries.conf"),
            format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
        )
        .unwrap();
        Podman {
            dir,
            store: store.to_path_buf(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.dir.join("registries.conf"))
            .args(["--events-backend", "file", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["image", "unmount", "--all"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.join("graph"))
            .output();
        let _ = lamina().arg("umount").arg(&self.store).output();
    }
}

/// The layer digests of `image`'s manifest in the registry.
fn layer_digests(image: &str) -> Vec<String> {
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout;
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn start_store(w: &Path) -> (PathBuf, PathBuf) {
    let store = w.join("store");
    let cache = w.join("cache");
    std::fs::create_dir_all(&store).unwrap();
    let out = lamina()
        .args(["store", "--cache-dir"])
        .arg(&cache)
        .arg(&store)
        .output()
        .unwrap();
    assert_ok(&out);
    (store, cache)
}

#[test]
fn podman_pulls_a_lazy_image_from_the_store_and_its_tree_equals_umoci() {
    if !require_tools(&[
        "docker-registry",
        "umoci",
        "skopeo",
        "podman",
        "setfattr",
        "mknod",
        "ldd",
    ]) || !require_root()
        || !require_fuse()
        || !have_python()
    {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let steps = [
        Step::Repack(base_layer),
        Step::Repack(changes_layer),
        Step::Tar(opaque_layer_tar),
        Step::Repack(python_and_more),
    ];
    let umoci = build_image(w, &steps);
    let src = format!("{}/als-src:t", registry.addr);
    let lazy = format!("{}/als-zc:t", registry.addr);
    push_and_convert(&umoci.layout, &src, &lazy, &w.join("convert-cache"));
    let layers = layer_digests(&lazy);
    let (store, _cache) = start_store(w);
    let podman = Podman::new(w, &registry.addr, &store);

    // 1. The pull takes every layer from the store: a small share of the image is fetched.
    let before = registry.settled_blob_gets("als-zc", None);
    let started = std::time::Instant::now();
    let pulled = podman.cmd(&["pull", "--tls-verify=false", &lazy]);
    let lazy_time = started.elapsed();
    assert_ok(&pulled);
    // The store counts uses (create of `use` answers ENOENT), so podman does not complain.
    let said = String::from_utf8_lossy(&pulled.stderr);
    assert!(!said.contains("doesn't seem to be supported"), "{said}");
    let after = registry.settled_blob_gets("als-zc", None);
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
    let fetched = after.1 - before.1;
    assert!(
        fetched * 10 < image_bytes,
        "podman pull fetched {fetched} of {image_bytes} bytes: layers were downloaded"
    );
    let layer_links = std::fs::read_dir(w.join("podman/graph/overlay"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("additionallayer").exists())
        .count();
    assert_eq!(layer_links, layers.len(), "every layer comes from the store");

    // 2. The image as podman mounts it is the image umoci unpacks; python runs from it.
    let mounted = PathBuf::from(podman.ok(&["image", "mount", &lazy]));
    assert_same_tree(&mounted, &w.join("oracle/rootfs"));
    let out = run(Command::new("chroot").arg(&mounted).args([
        "/usr/bin/python3",
        "-c",
        "import json, http.client; print(json.dumps({'ok': True}))",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"ok": true}"#);
    podman.ok(&["image", "unmount", &lazy]);

    // The protocol by hand on one layer, and writes inside a diff refused without harm.
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&lazy)
    };
    let layer_dir = store.join(&b64).join(&layers[0]);
    assert_eq!(
        std::fs::File::create(layer_dir.join("use")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert!(std::fs::remove_dir(layer_dir.join("diff/usr")).is_err());
    assert!(
        std::fs::metadata(layer_dir.join("diff/usr")).unwrap().is_dir(),
        "the store still answers"
    );
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(layer_dir.join("info")).unwrap()).unwrap();
    assert_eq!(info["compressed-diff-digest"], layers[0].as_str());
    assert!(info["diff-size"].as_i64().unwrap() > 0, "{info}");

    // 3. A plain pull of the same image, for the record (printed, not asserted).
    let plain = Podman::new(&w.join("plain"), &registry.addr, &w.join("no-store"));
    std::fs::create_dir_all(w.join("no-store")).unwrap();
    let started = std::time::Instant::now();
    plain.ok(&["pull", "--tls-verify=false", &src]);
    eprintln!(
        "podman pull on loopback: plain (gzip) {:.3} s; from lamina's store (zstd:chunked) {:.3} s, {fetched} of {image_bytes} bytes ({:.2}%)",
        started.elapsed().as_secs_f64(),
        lazy_time.as_secs_f64(),
        100.0 * fetched as f64 / image_bytes as f64
    );

    // 4. podman push of the image reads each layer from the store's `blob` (podman 4.3
    //    decompresses it and compresses it again, so the blob digests are its own): the
    //    pushed image, copied back by skopeo and unpacked by umoci, is the original tree,
    //    and its config keeps the diff_ids.
    let pushed = format!("{}/als-pushed:t", registry.addr);
    podman.ok(&["push", "--tls-verify=false", &lazy, &format!("docker://{pushed}")]);
    assert_eq!(layer_digests(&pushed).len(), layers.len());
    let back = w.join("pushed-layout");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{pushed}"))
        .arg(format!("oci:{}:t", back.display())));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", back.display()))
        .arg(w.join("pushed-bundle")));
    assert_same_tree(&w.join("pushed-bundle/rootfs"), &w.join("oracle/rootfs"));
}

#[test]
fn an_unchanged_gzip_image_with_a_gzip_index_comes_from_the_store() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "podman", "setfattr", "mknod"])
        || !require_root()
        || !require_fuse()
    {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let steps = [
        Step::Repack(base_layer),
        Step::Repack(changes_layer),
        Step::Tar(opaque_layer_tar),
    ];
    let umoci = build_image(w, &steps);
    let src = format!("{}/als-gz:t", registry.addr);
    push_and_convert(
        &umoci.layout,
        &src,
        &format!("{}/als-gz:zc", registry.addr),
        &w.join("cc"),
    );
    let layers = layer_digests(&src);
    let (store, _cache) = start_store(w);
    let podman = Podman::new(w, &registry.addr, &store);
    // With a gzip index pushed beside the unchanged image, every layer comes from the store.
    let out = lamina()
        .args(["index", &src])
        .env("LAMINA_CACHE_DIR", w.join("index-cache"))
        .output()
        .unwrap();
    assert_ok(&out);
    podman.ok(&["pull", "--tls-verify=false", &src]);
    let layer_links = std::fs::read_dir(w.join("podman/graph/overlay"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("additionallayer").exists())
        .count();
    assert_eq!(layer_links, layers.len(), "every layer comes from the store");
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&src)
    };
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(&b64).join(&layers[0]).join("info")).unwrap()).unwrap();
    assert!(info["diff-size"].as_i64().unwrap() > 0, "{info}");
    let mounted = PathBuf::from(podman.ok(&["image", "mount", &src]));
    assert_same_tree(&mounted, &w.join("oracle/rootfs"));
    podman.ok(&["image", "unmount", &src]);
}

#[test]
fn a_second_image_on_the_same_base_fetches_nothing_more_of_it() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "podman", "setfattr", "mknod"])
        || !require_root()
        || !require_fuse()
    {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let first = build_image(&w.join("a"), &[Step::Repack(base_layer), Step::Repack(changes_layer)]);
    // The second image is the first plus one layer: both share the first's layers.
    std::fs::create_dir_all(w.join("b")).unwrap();
    run(Command::new("cp").arg("-a").arg(&first.layout).arg(w.join("b/layout")));
    let second = crate::support::image::Umoci {
        layout: w.join("b/layout"),
    };
    std::fs::write(w.join("b/opaque.tar"), opaque_layer_tar()).unwrap();
    second.add_layer("t", &w.join("b/opaque.tar"));
    second.unpack("t", &w.join("b/oracle"));
    let (a, b) = (
        format!("{}/als-a:t", registry.addr),
        format!("{}/als-b:t", registry.addr),
    );
    push_and_convert(
        &first.layout,
        &format!("{}/als-a-src:t", registry.addr),
        &a,
        &w.join("cc"),
    );
    push_and_convert(
        &second.layout,
        &format!("{}/als-b-src:t", registry.addr),
        &b,
        &w.join("cc"),
    );
    let (la, lb) = (layer_digests(&a), layer_digests(&b));
    assert_eq!(la[0], lb[0], "the two images share their base layer");
    let (store, _cache) = start_store(w);
    let podman = Podman::new(w, &registry.addr, &store);
    podman.ok(&["pull", "--tls-verify=false", &a]);
    let mounted = PathBuf::from(podman.ok(&["image", "mount", &a]));
    // Read every file of image a, base layer included.
    run(Command::new("tar")
        .arg("-cf")
        .arg("/dev/null")
        .arg("-C")
        .arg(&mounted)
        .arg("."));
    podman.ok(&["image", "unmount", &a]);
    // Image b into another graph root on the same store: podman cannot reuse its own copy of
    // the shared layers, so it takes them from the store again, under b's reference.
    let base = &la[0];
    let base_gets = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("/blobs/") && l.contains(base.as_str()))
            .count()
    };
    let _ = registry.settled_blob_gets("als-b", None);
    let before = base_gets();
    let other = Podman::new(&w.join("other"), &registry.addr, &store);
    other.ok(&["pull", "--tls-verify=false", &b]);
    let mounted = PathBuf::from(other.ok(&["image", "mount", &b]));
    run(Command::new("tar")
        .arg("-cf")
        .arg("/dev/null")
        .arg("-C")
        .arg(&mounted)
        .arg("."));
    let _ = registry.settled_blob_gets("als-b", None);
    assert_eq!(base_gets(), before, "the base layer came from the shared cache");
    let linked = std::fs::read_dir(w.join("other/podman/graph/overlay"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("additionallayer").exists())
        .count();
    assert_eq!(linked, lb.len(), "every layer of b from the store");
    assert_same_tree(&mounted, &w.join("b/oracle/rootfs"));
}

#[test]
fn the_store_refuses_names_it_cannot_trust() {
    if !require_tools(&["docker-registry"]) || !require_root() || !require_fuse() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let (store, _cache) = start_store(work.path());
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let known = store.join(b64(&format!("{}/nothing:t", registry.addr)));
    for (path, want) in [
        (store.join("not-base64!"), std::io::ErrorKind::NotFound),
        (store.join(b64("UPPER/Case:t")), std::io::ErrorKind::NotFound),
        (known.join("not-a-digest"), std::io::ErrorKind::NotFound),
        // A well-formed name of an image the registry does not have: not offered.
        (
            known.join(format!("sha256:{}", "0".repeat(64))),
            std::io::ErrorKind::NotFound,
        ),
    ] {
        let err = std::fs::metadata(&path).unwrap_err();
        assert_eq!(err.kind(), want, "{}", path.display());
    }
    // A registry that refuses connections: the lookup fails at once (EIO), no hang.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = store
        .join(b64(&format!("{dead}/x:t")))
        .join(format!("sha256:{}", "1".repeat(64)));
    let err = std::fs::metadata(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO for {}", path.display());
    // Nothing can be written.
    assert!(std::fs::write(store.join("x"), b"").is_err());
    let _ = lamina().arg("umount").arg(&store).output();
    poll::until("the store to be unmounted", || {
        (!std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(store.to_str().unwrap()))
        .then_some(())
    });
}
