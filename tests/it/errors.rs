//! Bad input gets a clear error, the right exit code, and leaves no tree behind.

use crate::support::layout::{push_layers, Entry, Layer};
use crate::support::registry::TestRegistry;
use crate::support::{assert_failed, lamina, lamina_pull, require_tools};

#[test]
fn malformed_reference_exits_2_naming_the_problem() {
    let cases = [
        ("Ubuntu", "lowercase"),
        ("docker.io/Upper/case", "lowercase"),
        ("x:bad/tag:", "invalid reference"),
        ("a@sha256:xyz", "sha256"),
    ];
    for (reference, wanted) in cases {
        let out = lamina()
            .args(["pull", reference, "/tmp/lamina-never-created"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{reference}: {err}");
        assert!(err.contains(wanted), "{reference}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/lamina-never-created").exists());
}

#[test]
fn registry_errors_are_clear_and_leave_nothing() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // Unknown image: URL, status and the registry's error body.
    let err = assert_failed(&lamina_pull(
        &format!("{}/nothing:here", registry.addr),
        &w.join("o1"),
        &[],
    ));
    assert!(
        err.contains("404") && err.contains("MANIFEST_UNKNOWN") && err.contains("/v2/nothing/manifests/here"),
        "{err}"
    );

    // A stored blob corrupted on the registry: digest mismatch with both digests.
    let layer = Layer::gzip(&[Entry::File("f", 0o644, &[7u8; 100_000])]);
    let blob = layer.blob.clone();
    let image = push_layers(w, &registry.addr, "corrupt", &[layer]);
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob));
    let data = registry.blob_data(&hex);
    let mut stored = std::fs::read(&data).unwrap();
    let mid = stored.len() / 2;
    stored[mid] ^= 0xff;
    std::fs::write(&data, stored).unwrap();
    let err = assert_failed(&lamina_pull(&image, &w.join("o2"), &[]));
    assert!(err.contains("digest mismatch") && err.contains(&hex), "{err}");
    assert!(!w.join("o2").exists());
    assert!(
        crate::support::dir_names(w).iter().all(|n| !n.contains("lamina")),
        "staging left behind"
    );

    // An unknown layer media type: the list of supported ones.
    let mut odd = Layer::gzip(&[Entry::File("f", 0o644, b"x")]);
    odd.media_type = "application/vnd.example.unknown.layer".into();
    let image = push_layers(w, &registry.addr, "odd", &[odd]);
    let err = assert_failed(&lamina_pull(&image, &w.join("o3"), &[]));
    assert!(
        err.contains("application/vnd.example.unknown.layer") && err.contains("tar+gzip"),
        "{err}"
    );

    // A destination that is not empty is refused before anything is fetched.
    std::fs::create_dir(w.join("full")).unwrap();
    std::fs::write(w.join("full/keep"), b"mine").unwrap();
    let err = assert_failed(&lamina_pull(&image, &w.join("full"), &[]));
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(w.join("full/keep")).unwrap(), b"mine");
}
