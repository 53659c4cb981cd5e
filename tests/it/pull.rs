//! `lamina pull` of a many-layer umoci-built image equals `umoci unpack` of the same image.

use crate::support::image::skopeo_push;
use crate::support::layers::{build_image, PULL_LAYERS};
use crate::support::registry::TestRegistry;
use crate::support::tree::assert_same_pulled_tree;
use crate::support::{assert_ok, lamina_pull, require_root, require_tools};

#[test]
fn pull_of_umoci_image_matches_umoci_unpack() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "setfattr", "mknod"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_image(w, &PULL_LAYERS);
    let image = format!("{}/full:t", registry.addr);
    skopeo_push(&umoci.layout, "t", &image, None, false);

    let out = lamina_pull(&image, &w.join("out"), &[]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 layers"), "{stdout}");
    assert_same_pulled_tree(&w.join("out"), &w.join("oracle/rootfs"));

    // The oracle agreeing is the proof; these name what it proves, so a regression in the
    // oracle itself cannot hide one here.
    let o = w.join("out");
    assert!(!o.join("etc/remove-me").exists() && !o.join("var/data").exists() && !o.join("etc/pipe").exists());
    assert_eq!(crate::support::dir_names(&o.join("opt/opq")), ["new"]);
    assert_eq!(crate::support::dir_names(&o.join("opt/replace")), ["c"]);
    assert!(o.join("etc/thing/inside").is_file() && o.join("usr/share/dir-to-file").is_file());
}
