//! `lamina convert` against real tools: the converted image, pulled by skopeo (re-encoded to
//! gzip, since umoci 0.4.7 cannot read zstd) and unpacked by umoci, equals the original;
//! lamina reads the TOC of zstd:chunked layers that skopeo wrote; OCI layouts work both ways.

use std::path::Path;
use std::process::Command;

use crate::support::image::{skopeo_push, Umoci};
use crate::support::layers::{
    base_layer, build_image, changes_layer, noise, opaque_layer_tar, push_multi_platform, Step,
};
use crate::support::registry::TestRegistry;
use crate::support::tree::{assert_same_pulled_tree, assert_same_tree};
use crate::support::{assert_ok, lamina, lamina_pull, require_root, require_tools, run};

fn lamina_ok(args: &[&str], cache: &Path) -> String {
    let out = lamina().args(args).env("LAMINA_CACHE_DIR", cache).output().unwrap();
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// skopeo copy from the registry into a layout, re-encoding layers as gzip, then umoci unpack.
pub(crate) fn skopeo_gzip_unpack(image: &str, work: &Path, name: &str) -> std::path::PathBuf {
    let layout = work.join(format!("{name}-layout"));
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
        ])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:t", layout.display())));
    let bundle = work.join(format!("{name}-bundle"));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

#[test]
fn converted_images_equal_their_source_for_real_tools() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "setfattr", "mknod"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cache = w.join("cache");
    let umoci = build_image(
        w,
        &[
            Step::Repack(base_layer),
            Step::Repack(changes_layer),
            Step::Tar(opaque_layer_tar),
        ],
    );
    let oracle = w.join("oracle/rootfs");
    let src = format!("{}/src:t", registry.addr);
    skopeo_push(&umoci.layout, "t", &src, None, false);

    // Registry → registry; every layer converted and mountable lazily, every chunk verifies.
    let dst = format!("{}/converted:t", registry.addr);
    let first = lamina_ok(&["convert", &src, &dst], &cache);
    assert_eq!(first.matches("converted ").count(), 4, "{first}");
    let inspected = lamina_ok(&["inspect", "--verify", &dst], &cache);
    assert!(inspected.contains("3 of 3 layers can be mounted lazily"), "{inspected}");
    assert_eq!(inspected.matches("verified ").count(), 3, "{inspected}");

    // Real tools see the same image; so does lamina pull.
    assert_same_tree(&skopeo_gzip_unpack(&dst, w, "skopeo"), &oracle);
    assert_ok(&lamina_pull(&dst, &w.join("pulled"), &[]));
    assert_same_pulled_tree(&w.join("pulled"), &oracle);

    // Re-running reuses every conversion and gives the same manifest.
    let again = lamina_ok(
        &["convert", &src, &format!("{}/converted-again:t", registry.addr)],
        &cache,
    );
    assert_eq!(again.matches("reused an earlier conversion").count(), 3, "{again}");
    let digest = |s: &str| {
        s.lines()
            .last()
            .unwrap()
            .split('(')
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(digest(&first), digest(&again));

    // Converting the converted image copies its layers as they are.
    let twice = lamina_ok(&["convert", &dst, &format!("{}/twice:t", registry.addr)], &cache);
    assert_eq!(twice.matches("already zstd:chunked").count(), 3, "{twice}");

    // OCI layouts: layout → registry, and registry → layout.
    let from_layout = format!("{}/from-layout:t", registry.addr);
    lamina_ok(
        &["convert", &format!("oci:{}:t", umoci.layout.display()), &from_layout],
        &w.join("cache2"),
    );
    assert_ok(&lamina_pull(&from_layout, &w.join("pulled-from-layout"), &[]));
    assert_same_pulled_tree(&w.join("pulled-from-layout"), &oracle);
    let out_layout = w.join("out-layout");
    lamina_ok(&["convert", &src, &format!("oci:{}:zc", out_layout.display())], &cache);
    let back = format!("{}/back:t", registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:zc", out_layout.display()))
        .arg(format!("docker://{back}")));
    assert_same_tree(&skopeo_gzip_unpack(&back, w, "back"), &oracle);
}

#[test]
fn lamina_reads_zstd_chunked_written_by_skopeo() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "unshare"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = Umoci::init(&w.join("layout"), "t");
    let bundle = w.join("bundle");
    umoci.unpack("t", &bundle);
    std::fs::write(bundle.join("rootfs/big"), noise(3 << 20, 9)).unwrap();
    std::fs::write(bundle.join("rootfs/small"), b"small file").unwrap();
    umoci.repack("t", &bundle);
    // skopeo silently reuses a gzip blob it knows of, through its blob-info cache: give it a
    // private, empty one (see shared/reference/formats.md).
    let image = format!("{}/skopeo-zstd-chunked:t", registry.addr);
    run(Command::new("unshare").args(["-m", "sh", "-c"]).arg(format!(
        "mkdir -p /var/lib/containers/cache && mount -t tmpfs none /var/lib/containers/cache && \
         exec skopeo copy --quiet --dest-tls-verify=false --dest-compress-format zstd:chunked oci:{}:t docker://{image}",
        umoci.layout.display()
    )));
    let out = lamina().args(["inspect", "--verify", &image]).output().unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("zstd:chunked") && text.contains("1 of 1 layers can be mounted lazily"),
        "{text}"
    );
    assert!(text.contains("verified  2 files"), "{text}");

    // The footer alone (no annotations) locates the same TOC: check it on the real blob's tail.
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout;
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layer = &manifest["layers"][0];
    let hex = layer["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = std::fs::read(registry.blob_data(&hex)).unwrap();
    let by_footer = lamina::format::zstd_chunked::location_from_footer(&blob[blob.len() - 72..]).expect("a footer");
    let annotations: std::collections::HashMap<String, String> =
        serde_json::from_value(layer["annotations"].clone()).unwrap();
    let by_annotation = lamina::format::zstd_chunked::location_from_annotations(&annotations)
        .unwrap()
        .unwrap();
    assert_eq!(
        (by_footer.offset, by_footer.compressed_len),
        (by_annotation.offset, by_annotation.compressed_len)
    );
}

#[test]
fn multi_platform_index_is_converted_per_platform() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src = push_multi_platform(&registry.addr, "multi", w);

    let dst = format!("{}/multi-zc:t", registry.addr);
    let out = lamina_ok(&["convert", &src, &dst], &w.join("cache"));
    assert!(out.contains("linux/amd64:") && out.contains("linux/arm64:"), "{out}");
    for arch in ["amd64", "arm64"] {
        let platform = format!("linux/{arch}");
        let inspected = lamina_ok(
            &["inspect", "--verify", "--platform", &platform, &dst],
            &w.join("cache"),
        );
        assert!(inspected.contains("1 of 1 layers can be mounted lazily"), "{inspected}");
        assert_ok(&lamina_pull(&dst, &w.join(arch), &["--platform", &platform]));
        assert_eq!(std::fs::read(w.join(arch).join("platform")).unwrap(), arch.as_bytes());
    }
    let only = lamina_ok(
        &[
            "convert",
            "--platform",
            "linux/arm64",
            &src,
            &format!("{}/only-arm:t", registry.addr),
        ],
        &w.join("cache"),
    );
    assert!(
        only.contains("linux/arm64:") && !only.contains("linux/amd64:"),
        "{only}"
    );
}
