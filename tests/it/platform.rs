//! A multi-platform index: `--platform` picks the right manifest; the default is this machine.

use crate::support::layers::push_multi_platform;
use crate::support::registry::TestRegistry;
use crate::support::{assert_failed, assert_ok, lamina_pull, require_tools};

#[test]
fn platform_selection_from_an_index() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let image = push_multi_platform(&registry.addr, "multi", w);

    assert_ok(&lamina_pull(&image, &w.join("arm"), &["--platform", "linux/arm64"]));
    assert_eq!(std::fs::read(w.join("arm/platform")).unwrap(), b"arm64");
    assert_ok(&lamina_pull(&image, &w.join("amd"), &["--platform", "linux/amd64"]));
    assert_eq!(std::fs::read(w.join("amd/platform")).unwrap(), b"amd64");
    if std::env::consts::ARCH == "x86_64" {
        assert_ok(&lamina_pull(&image, &w.join("host"), &[]));
        assert_eq!(std::fs::read(w.join("host/platform")).unwrap(), b"amd64");
    }
    let err = assert_failed(&lamina_pull(&image, &w.join("none"), &["--platform", "linux/s390x"]));
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    assert!(!w.join("none").exists());
}
