//! `lamina snapshotter` under Debian's containerd: CRI pulls of a zstd:chunked image that
//! download nothing of its layers, container snapshots mounted as `ctr` prints them and
//! compared with `umoci unpack`, python run from one, writes that outlive a restart of the
//! snapshotter (and of its mounts), the ordinary path for a gzip image, and the service's
//! error codes.

use std::path::Path;
use std::process::Command;

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::tonic;

use crate::fetching::python_and_more;
use crate::support::containerd::{fuse_mounts_under, tail, top_chain_id, Containerd, Snapshotter};
use crate::support::layers::{
    base_layer, build_image, changes_layer, opaque_layer_tar, push_and_convert, Step, MOUNT_LAYERS,
};
use crate::support::mount::{have_python, require_fuse};
use crate::support::registry::TestRegistry;
use crate::support::tree::{assert_same_pulled_tree, assert_same_tree};
use crate::support::{poll, require_root, require_tools, run};

/// The config of the image tagged `t` in an OCI layout.
fn layout_config(layout: &Path) -> serde_json::Value {
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    blob(manifest["config"]["digest"].as_str().unwrap())
}

/// Unmount `point` (lazily) if something is mounted there.
fn umount(point: &Path) {
    let _ = Command::new("umount").arg("-l").arg(point).output();
}

/// What the snapshotter's records say of remote snapshots: how many.
fn remote_records(root: &Path) -> usize {
    std::fs::read_dir(root.join("snapshots"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("info.json")).is_ok_and(|t| t.contains("\"remote\": {"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn containerd_pulls_a_lazy_image_through_cri_and_its_container_snapshot_equals_umoci() {
    if !require_tools(&[
        "docker-registry",
        "umoci",
        "skopeo",
        "containerd",
        "ctr",
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
    let mut steps = MOUNT_LAYERS.to_vec();
    steps.push(Step::Repack(python_and_more));
    let umoci = build_image(w, &steps);
    let oracle = w.join("oracle/rootfs");
    let src = format!("{}/ctrd-src:t", registry.addr);
    let lazy = format!("{}/ctrd-zc:t", registry.addr);
    push_and_convert(&umoci.layout, &src, &lazy, &w.join("convert-cache"));
    let chain = top_chain_id(&layout_config(&umoci.layout));

    let mut snapshotter = Snapshotter::start(w, true);
    let containerd = Containerd::start(w, &registry.addr, "lamina", &snapshotter.socket);

    // 1. The CRI pull: every layer becomes a remote snapshot; no layer blob is downloaded.
    let before = registry.settled_blob_gets("ctrd-zc", None);
    let image_id = containerd.cri_pull(&lazy).unwrap_or_else(|e| {
        panic!(
            "{e}\ncontainerd:\n{}\nsnapshotter:\n{}",
            tail(&containerd.log(), 40),
            tail(&snapshotter.log(), 40)
        )
    });
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let after = registry.settled_blob_gets("ctrd-zc", None);
    let manifest: serde_json::Value = serde_json::from_slice(
        &run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{lazy}")))
        .stdout,
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let image_bytes: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    let fetched = after.1 - before.1;
    eprintln!(
        "CRI pull through lamina: {} blob requests, {fetched} of {image_bytes} layer bytes ({:.2}%)",
        after.0 - before.0,
        100.0 * fetched as f64 / image_bytes as f64
    );
    assert_eq!(
        remote_records(&snapshotter.root),
        layers.len(),
        "every layer is a remote snapshot"
    );
    assert!(
        fetched * 10 < image_bytes,
        "the pull fetched {fetched} of {image_bytes} bytes: layers were downloaded"
    );
    let listed = containerd.ctr_ok(&["snapshots", "--snapshotter", "lamina", "ls"]);
    assert!(listed.contains(&chain), "top chain {chain} not in:\n{listed}");

    // 2. A container snapshot on the image's top chain, mounted as ctr prints it.
    let target = w.join("rootfs");
    containerd.prepare_and_mount("ctr-1", &chain, &target);
    assert_same_tree(&target, &oracle);
    let out = run(Command::new("chroot").arg(&target).args([
        "/usr/bin/python3",
        "-c",
        "import json, http.client; print(json.dumps({'ok': True}))",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"ok": true}"#);
    // `lamina stats` reads the union serving the chain like any lamina mount.
    let unions = fuse_mounts_under(&snapshotter.root);
    let stats = run(crate::support::lamina()
        .args(["stats", "--json", "--cache-dir"])
        .arg(&snapshotter.cache)
        .arg(&unions[0]));
    let state: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(state["image"].as_str().unwrap().contains("/ctrd-zc@sha256:"), "{state}");
    assert!(
        state["stats"]["fetched_bytes"].as_u64().unwrap() > 0,
        "python's start was read through it"
    );
    std::fs::write(target.join("written-in-container"), b"kept").unwrap();
    std::fs::remove_file(target.join("usr/bin/python3")).unwrap();

    // 3. A reboot, as far as lamina sees one: the container's mount, the snapshotter and
    //    every lamina mount it started are gone; the snapshotter starts again on its root.
    umount(&target);
    let unions = fuse_mounts_under(&snapshotter.root);
    assert_eq!(unions.len(), 1, "one lamina union serves the chain: {unions:?}");
    for u in &unions {
        umount(u);
    }
    snapshotter.restart();
    containerd.mount("ctr-1", &target);
    assert_eq!(std::fs::read(target.join("written-in-container")).unwrap(), b"kept");
    assert!(!target.join("usr/bin/python3").exists(), "the deletion was kept");
    let out = run(Command::new("chroot")
        .arg(&target)
        .args(["/usr/bin/python3.11", "-c", "print(6 * 7)"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    umount(&target);

    // 4. A read-only view of the image is the image.
    let view = w.join("view");
    containerd.ctr_ok(&["snapshots", "--snapshotter", "lamina", "view", "view-1", &chain]);
    containerd.mount("view-1", &view);
    assert_same_tree(&view, &oracle);
    assert!(std::fs::write(view.join("x"), b"").is_err(), "a view is read-only");
    umount(&view);

    // 5. Removing the container snapshot (active ones are kept by containerd until removed;
    //    the view, unreferenced, is collected) and the image lets containerd's garbage
    //    collector remove every snapshot through the service: no lamina mount is left behind.
    containerd.ctr_ok(&["snapshots", "--snapshotter", "lamina", "rm", "ctr-1"]);
    //    The CRI plugin names the image three ways (tag, repository digest, image id).
    let names = containerd.ctr_ok(&["images", "ls", "-q"]);
    let mut rm = vec!["images", "rm", "--sync"];
    rm.extend(names.lines());
    assert_eq!(rm.len(), 6, "{names}");
    containerd.ctr_ok(&rm);
    poll::until("containerd's GC to remove the remote snapshots", || {
        (remote_records(&snapshotter.root) == 0).then_some(())
    });
    poll::until("the lamina unions to end", || {
        fuse_mounts_under(&snapshotter.root).is_empty().then_some(())
    });
}

#[test]
fn a_gzip_image_takes_the_ordinary_path_until_indexed_and_equals_umoci() {
    if !require_tools(&[
        "docker-registry",
        "umoci",
        "skopeo",
        "containerd",
        "ctr",
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
    // The standard layers without the one that turns directories into files: containerd
    // 1.6 cannot apply that one with its own overlayfs snapshotter either ("mkparent …
    // dir-to-file: not a directory"), whereas lamina's lazy path serves it (test above).
    let steps = [
        Step::Repack(base_layer),
        Step::Repack(changes_layer),
        Step::Tar(opaque_layer_tar),
        Step::Repack(python_and_more),
    ];
    let umoci = build_image(w, &steps);
    let src = format!("{}/ctrd-gz:t", registry.addr);
    let lazy = format!("{}/ctrd-gz-zc:t", registry.addr);
    push_and_convert(&umoci.layout, &src, &lazy, &w.join("convert-cache"));
    let chain = top_chain_id(&layout_config(&umoci.layout));

    let snapshotter = Snapshotter::start(w, true);
    let containerd = Containerd::start(w, &registry.addr, "lamina", &snapshotter.socket);
    let pull = |c: &Containerd, image: &str| {
        let start = std::time::Instant::now();
        c.cri_pull(image).unwrap_or_else(|e| {
            panic!(
                "{e}\ncontainerd:\n{}\nsnapshotter:\n{}",
                tail(&c.log(), 40),
                tail(&snapshotter.log(), 40)
            )
        });
        start.elapsed()
    };
    let ordinary = pull(&containerd, &src);
    assert_eq!(
        remote_records(&snapshotter.root),
        0,
        "a gzip layer is applied, not served"
    );
    assert!(
        snapshotter.log().contains("no table of contents"),
        "the snapshotter says why:\n{}",
        tail(&snapshotter.log(), 20)
    );
    let target = w.join("rootfs");
    containerd.prepare_and_mount("ctr-gz", &chain, &target);
    // containerd applied the layers (directory mtimes are the time of applying, as with
    // any containerd snapshotter; see assert_same_pulled_tree).
    assert_same_pulled_tree(&target, &w.join("oracle/rootfs"));
    umount(&target);

    // The same image, converted, pulled lazily; and the gzip one through containerd's own
    // overlayfs snapshotter. Figures for the record (printed, not asserted: see bench/).
    // (A second snapshotter and containerd: this one already has the chain, applied.)
    let wb = w.join("lazy");
    std::fs::create_dir_all(&wb).unwrap();
    let snapshotter_b = Snapshotter::start(&wb, true);
    let containerd_b = Containerd::start(&wb, &registry.addr, "lamina", &snapshotter_b.socket);
    let lazy_pull = pull(&containerd_b, &lazy);
    let layer_count = layout_config(&umoci.layout)["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        remote_records(&snapshotter_b.root),
        layer_count,
        "{}",
        tail(&snapshotter_b.log(), 12)
    );
    let overlayfs = Containerd::start(w, &registry.addr, "overlayfs", &snapshotter.socket);
    let own = pull(&overlayfs, &src);
    eprintln!(
        "CRI pull of one image on loopback: containerd overlayfs (gzip) {:.3} s; lamina ordinary path (gzip) {:.3} s; lamina lazy (zstd:chunked) {:.3} s",
        own.as_secs_f64(),
        ordinary.as_secs_f64(),
        lazy_pull.as_secs_f64()
    );
    // Conversion keeps the diff_ids: the lazy pull made the same chain, served remotely.
    let listed = containerd_b.ctr_ok(&["snapshots", "--snapshotter", "lamina", "ls"]);
    assert!(listed.contains(&chain), "chain {chain} not in:\n{listed}");

    // The gzip image itself, unchanged, once `lamina index` has pushed indexes beside it: every
    // layer becomes a remote snapshot, and the container's tree equals umoci's exactly.
    let out = crate::support::lamina()
        .args(["index", &src])
        .env("LAMINA_CACHE_DIR", w.join("index-cache"))
        .output()
        .unwrap();
    crate::support::assert_ok(&out);
    let wc = w.join("indexed");
    std::fs::create_dir_all(&wc).unwrap();
    let snapshotter_c = Snapshotter::start(&wc, true);
    let containerd_c = Containerd::start(&wc, &registry.addr, "lamina", &snapshotter_c.socket);
    let indexed_pull = pull(&containerd_c, &src);
    assert_eq!(
        remote_records(&snapshotter_c.root),
        layer_count,
        "{}",
        tail(&snapshotter_c.log(), 12)
    );
    let target = wc.join("rootfs");
    containerd_c.prepare_and_mount("ctr-gzi", &chain, &target);
    assert_same_tree(&target, &w.join("oracle/rootfs"));
    umount(&target);
    eprintln!(
        "CRI pull of the unchanged gzip image with its gzip index: {:.3} s",
        indexed_pull.as_secs_f64()
    );
}

/// The code of a call that must fail.
#[track_caller]
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match r {
        Ok(_) => panic!("the call succeeded"),
        Err(s) => s.code(),
    }
}

/// A client of the service's own socket, without containerd in between.
async fn client(socket: &Path) -> api::snapshots_client::SnapshotsClient<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
        .unwrap();
    api::snapshots_client::SnapshotsClient::new(channel)
}

#[test]
fn the_service_answers_with_the_codes_containerd_expects() {
    if !require_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // A registry that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = w.join("snapshotter.json");
    std::fs::write(&config, r#"{"prepare_timeout_secs": 2}"#).unwrap();
    let snapshotter = Snapshotter::start_with(w, false, &["--config".as_ref(), config.as_os_str()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut c = client(&snapshotter.socket).await;
        let prepare = |key: &str, parent: &str| api::PrepareSnapshotRequest {
            snapshotter: "lamina".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Default::default(),
        };
        let m = c.prepare(prepare("a", "")).await.unwrap().into_inner().mounts;
        assert_eq!((m.len(), m[0].r#type.as_str()), (1, "bind"));
        assert_eq!(code(c.prepare(prepare("a", "")).await), tonic::Code::AlreadyExists);
        assert_eq!(code(c.prepare(prepare("b", "nope")).await), tonic::Code::NotFound);
        assert_eq!(
            code(c.prepare(prepare("b", "a")).await),
            tonic::Code::InvalidArgument,
            "parent not committed"
        );
        let commit = |name: &str, key: &str| api::CommitSnapshotRequest {
            snapshotter: "lamina".into(),
            name: name.into(),
            key: key.into(),
            labels: Default::default(),
        };
        assert_eq!(code(c.commit(commit("x", "nope")).await), tonic::Code::NotFound);
        c.commit(commit("base", "a")).await.unwrap();
        assert_eq!(
            code(c.commit(commit("again", "base")).await),
            tonic::Code::FailedPrecondition
        );
        let m = c.prepare(prepare("top", "base")).await.unwrap().into_inner().mounts;
        assert_eq!(m[0].r#type, "overlay");
        assert!(
            m[0].options.iter().any(|o| o.starts_with("upperdir=")),
            "{:?}",
            m[0].options
        );
        let remove = |key: &str| api::RemoveSnapshotRequest {
            snapshotter: "lamina".into(),
            key: key.into(),
        };
        assert_eq!(code(c.remove(remove("base")).await), tonic::Code::FailedPrecondition);
        assert_eq!(code(c.remove(remove("nope")).await), tonic::Code::NotFound);
        let mounts = api::MountsRequest {
            snapshotter: "lamina".into(),
            key: "base".into(),
        };
        assert_eq!(code(c.mounts(mounts).await), tonic::Code::FailedPrecondition);
        // List with containerd's own filter syntax.
        let list = |filter: &str| api::ListSnapshotsRequest {
            snapshotter: "lamina".into(),
            filters: vec![filter.into()],
        };
        let mut names = Vec::new();
        let mut stream = c
            .list(list(r#"kind==committed,parent=="""#))
            .await
            .unwrap()
            .into_inner();
        while let Some(batch) = stream.message().await.unwrap() {
            names.extend(batch.info.into_iter().map(|i| i.name));
        }
        assert_eq!(names, vec!["base".to_string()]);
        // The wrapper streams the answer, so the error comes as the stream's first message.
        let mut refused = c.list(list("name~=x")).await.unwrap().into_inner();
        assert_eq!(
            code(refused.message().await.map(tonic::Response::new)),
            tonic::Code::InvalidArgument
        );
        c.remove(remove("top")).await.unwrap();
        c.remove(remove("base")).await.unwrap();

        // CRI labels that are malformed, or name a registry that refuses connections or never
        // answers: the layer takes the ordinary path (mounts to apply into), never an error
        // and never a hang (the silent one within the 2 s prepare deadline of the config).
        let chain = format!("sha256:{}", "ab".repeat(32));
        for (i, (chain, image)) in [
            ("not-a-digest".to_string(), "127.0.0.1:1/x:t".to_string()),
            (chain.clone(), format!("{dead}/x:t")),
            (chain.clone(), format!("{silent_addr}/x:t")),
        ]
        .into_iter()
        .enumerate()
        {
            let mut request = prepare(&format!("cri-{i}"), "");
            request.labels = [
                ("containerd.io/snapshot.ref".to_string(), chain),
                ("containerd.io/snapshot/cri.image-ref".to_string(), image),
                // By digest, so no tag deadline applies: only the prepare deadline bounds it.
                (
                    "containerd.io/snapshot/cri.manifest-digest".to_string(),
                    format!("sha256:{}", "cd".repeat(32)),
                ),
            ]
            .into();
            let started = std::time::Instant::now();
            let m = c.prepare(request).await.unwrap().into_inner().mounts;
            assert_eq!((m.len(), m[0].r#type.as_str()), (1, "bind"), "case {i}");
            // The request timeout of a read (30 s) would be far later: the 2 s deadline acted.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "case {i}: {:?}",
                started.elapsed()
            );
            c.remove(remove(&format!("cri-{i}"))).await.unwrap();
        }
        assert!(
            snapshotter.log().contains("did not answer within 2s"),
            "the silent registry met the prepare deadline"
        );
    });
    assert!(
        std::fs::read_dir(snapshotter.root.join("snapshots"))
            .unwrap()
            .next()
            .is_none(),
        "every directory went with its snapshot"
    );
}
