//! The tar-split lamina writes into zstd:chunked layers, read by an independent reader
//! (`support/tarsplit_check.py`: Python's stdlib and the `zstd` command, nothing of lamina):
//! the tar rebuilt from its segments and the files' frames is byte for byte the layer's
//! uncompressed tar (its sha256 is the config's diff_id), and every payload matches its
//! tar-split crc64 and TOC digest.

use std::path::Path;
use std::process::Command;

use crate::support::layers::{build_image, push_and_convert, PULL_LAYERS};
use crate::support::registry::TestRegistry;
use crate::support::{python, require_root, require_tools, run};

/// `skopeo inspect --raw` of the manifest (`extra` empty) or the config (`--config`).
fn inspect(image: &str, extra: &[&str]) -> serde_json::Value {
    let raw = run(Command::new("skopeo")
        .arg("inspect")
        .args(extra)
        .args(["--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout;
    serde_json::from_slice(&raw).unwrap()
}

#[test]
fn tar_split_rebuilds_each_converted_layer_byte_for_byte() {
    if !require_tools(&[
        "docker-registry",
        "umoci",
        "skopeo",
        "setfattr",
        "mknod",
        "zstd",
        "python3",
    ]) || !require_root()
    {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_image(w, &PULL_LAYERS);
    let src = format!("{}/split-src:t", registry.addr);
    let converted = format!("{}/split-zc:t", registry.addr);
    push_and_convert(&umoci.layout, &src, &converted, &w.join("cache"));

    let manifest = inspect(&converted, &[]);
    let config = inspect(&converted, &["--config"]);
    let descriptors = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(descriptors.len(), PULL_LAYERS.len(), "{manifest}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/tarsplit_check.py");
    for (i, (desc, diff_id)) in descriptors.iter().zip(diff_ids).enumerate() {
        assert_eq!(
            desc["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "layer {i}: {desc}"
        );
        let hex = desc["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let out = python().arg(&script).arg(registry.blob_data(hex)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "layer {i}: {stderr}");
        println!("layer {i}: {}", stderr.trim());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            diff_id.as_str().unwrap(),
            "layer {i}: the tar rebuilt from the tar-split is not the layer's tar ({})",
            stderr.trim()
        );
    }
}
