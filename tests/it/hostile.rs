//! Hostile layers never write, overwrite or expose anything outside the destination.

use std::path::Path;

use crate::support::layout::{Entry, Layer, Layout};
use crate::support::registry::TestRegistry;
use crate::support::{assert_failed, assert_ok, dir_names, lamina_pull, require_root, require_tools};

/// A directory outside the destination, with a file whose bytes and times must not change.
struct Canary {
    dir: std::path::PathBuf,
}

impl Canary {
    fn plant(parent: &Path) -> Canary {
        let dir = parent.join("canary");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), b"do not touch").unwrap();
        Canary { dir }
    }

    fn state(&self) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
        dir_names(&self.dir)
            .into_iter()
            .map(|n| {
                let p = self.dir.join(&n);
                let m = std::fs::symlink_metadata(&p).unwrap();
                (n, std::fs::read(&p).unwrap_or_default(), m.modified().unwrap())
            })
            .collect()
    }
}

/// Push one image made of `layers` and pull it; check the canary either way.
fn pull_hostile(
    name: &str,
    layers: Vec<Vec<Entry<'_>>>,
    registry: &TestRegistry,
    work: &Path,
    canary: &Canary,
) -> (std::process::Output, std::path::PathBuf) {
    let mut layout = Layout::create(&work.join(format!("layout-{name}")));
    let built: Vec<Layer> = layers.iter().map(|l| Layer::gzip(l)).collect();
    let desc = layout.image(&built, "amd64");
    layout.tag("t", desc);
    let image = format!("{}/hostile-{name}:t", registry.addr);
    crate::support::image::skopeo_push(&layout.dir, "t", &image, None, false);
    let before = canary.state();
    let dest = work.join(format!("out-{name}"));
    let out = lamina_pull(&image, &dest, &[]);
    assert_eq!(canary.state(), before, "{name}: the canary outside DIR changed");
    assert_eq!(
        dir_names(&canary.dir),
        ["secret"],
        "{name}: something was created outside DIR"
    );
    if !out.status.success() {
        assert!(!dest.exists(), "{name}: a failed pull left {}", dest.display());
    }
    (out, dest)
}

#[test]
fn hostile_layers_stay_inside_dir() {
    if !require_tools(&["docker-registry", "skopeo"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let canary = Canary::plant(w);
    let c = canary.dir.to_str().unwrap().to_string();
    let abs_file = format!("{c}/secret");
    let abs_new = format!("{c}/planted");

    // `..` components: refused, naming the entry.
    let (out, _) = pull_hostile(
        "dotdot",
        vec![vec![Entry::File("../../canary/planted", 0o644, b"x")]],
        &registry,
        w,
        &canary,
    );
    let err = assert_failed(&out);
    assert!(err.contains("../../canary/planted") && err.contains(".."), "{err}");

    // Absolute paths: contained under DIR, as tar and containerd do.
    let (out, dest) = pull_hostile(
        "absolute",
        vec![vec![Entry::File(&abs_new, 0o644, b"inside")]],
        &registry,
        w,
        &canary,
    );
    assert_ok(&out);
    assert_eq!(
        std::fs::read(dest.join(abs_new.trim_start_matches('/'))).unwrap(),
        b"inside"
    );

    // A symlink made earlier in the same layer is not followed by a later entry.
    let (out, dest) = pull_hostile(
        "symlink-same-layer",
        vec![vec![
            Entry::Symlink("evil", &c),
            Entry::File("evil/planted", 0o644, b"inside"),
        ]],
        &registry,
        w,
        &canary,
    );
    assert_ok(&out);
    assert!(dest.join("evil").is_dir() && !dest.join("evil").is_symlink());
    assert_eq!(std::fs::read(dest.join("evil/planted")).unwrap(), b"inside");

    // Nor is a symlink from a lower layer.
    let (out, dest) = pull_hostile(
        "symlink-lower-layer",
        vec![
            vec![Entry::Symlink("evil", &c)],
            vec![Entry::File("evil/planted", 0o644, b"inside")],
        ],
        &registry,
        w,
        &canary,
    );
    assert_ok(&out);
    assert_eq!(std::fs::read(dest.join("evil/planted")).unwrap(), b"inside");

    // Writing over a symlink that points outside replaces the link, never its target.
    let (out, dest) = pull_hostile(
        "overwrite-symlink",
        vec![
            vec![Entry::Symlink("link", &abs_file)],
            vec![Entry::File("link", 0o644, b"replaced")],
        ],
        &registry,
        w,
        &canary,
    );
    assert_ok(&out);
    assert_eq!(std::fs::read(dest.join("link")).unwrap(), b"replaced");

    // Hard links to outside targets: an absolute target resolves inside DIR (and is absent).
    let (out, _) = pull_hostile(
        "hardlink-absolute",
        vec![vec![Entry::Link("hl", &abs_file)]],
        &registry,
        w,
        &canary,
    );
    let err = assert_failed(&out);
    assert!(
        err.contains("hl") && err.contains("does not exist in the image"),
        "{err}"
    );

    let (out, _) = pull_hostile(
        "hardlink-dotdot",
        vec![vec![Entry::Link("hl", "../canary/secret")]],
        &registry,
        w,
        &canary,
    );
    let err = assert_failed(&out);
    assert!(err.contains("hl") && err.contains(".."), "{err}");

    // A hard link through a lower symlink is not followed either.
    let (out, _) = pull_hostile(
        "hardlink-through-symlink",
        vec![vec![Entry::Symlink("lnk", &c)], vec![Entry::Link("hl", "lnk/secret")]],
        &registry,
        w,
        &canary,
    );
    let err = assert_failed(&out);
    assert!(
        err.contains("hl") && err.contains("does not exist in the image"),
        "{err}"
    );

    // A hard link to a symlink that points outside links the symlink itself.
    let (out, dest) = pull_hostile(
        "hardlink-to-symlink",
        vec![vec![Entry::Symlink("lnk", &abs_file), Entry::Link("hl", "lnk")]],
        &registry,
        w,
        &canary,
    );
    assert_ok(&out);
    assert!(dest.join("hl").is_symlink());

    // A whiteout cannot reach outside either.
    let (out, _) = pull_hostile(
        "whiteout-dotdot",
        vec![vec![Entry::File("../canary/.wh.secret", 0o644, b"")]],
        &registry,
        w,
        &canary,
    );
    assert_failed(&out);
}
