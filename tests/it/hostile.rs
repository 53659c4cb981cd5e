//! Hostile layers never write, overwrite or expose anything outside the destination.

use std::path::Path;

use crate::support::layout::{push_layers, Entry, Layer};
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
    let built: Vec<Layer> = layers.iter().map(|l| Layer::gzip(l)).collect();
    let image = push_layers(work, &registry.addr, &format!("hostile-{name}"), &built);
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

/// What a hostile image's pull must do.
enum Want<'a> {
    /// Succeed, leaving `path` in DIR with these bytes (`None`: a symlink there).
    Inside(&'a str, Option<&'a [u8]>),
    /// Fail with an error naming all of these.
    Refused(&'a [&'a str]),
}

/// One hostile image: its name, its layers (bottom first), and what the pull must do.
struct Case<'a> {
    name: &'a str,
    layers: Vec<Vec<Entry<'a>>>,
    want: Want<'a>,
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
    let missing: &[&str] = &["hl", "does not exist in the image"];
    let cases = [
        // `..` components: refused, naming the entry.
        Case {
            name: "dotdot",
            layers: vec![vec![Entry::File("../../canary/planted", 0o644, b"x")]],
            want: Want::Refused(&["../../canary/planted", ".."]),
        },
        // Absolute paths: contained under DIR, as tar and containerd do.
        Case {
            name: "absolute",
            layers: vec![vec![Entry::File(&abs_new, 0o644, b"inside")]],
            want: Want::Inside(abs_new.trim_start_matches('/'), Some(b"inside")),
        },
        // A symlink made earlier in the same layer is not followed by a later entry: the
        // link is replaced by a directory.
        Case {
            name: "symlink-same-layer",
            layers: vec![vec![
                Entry::Symlink("evil", &c),
                Entry::File("evil/planted", 0o644, b"inside"),
            ]],
            want: Want::Inside("evil/planted", Some(b"inside")),
        },
        // Nor is a symlink from a lower layer.
        Case {
            name: "symlink-lower-layer",
            layers: vec![
                vec![Entry::Symlink("evil", &c)],
                vec![Entry::File("evil/planted", 0o644, b"inside")],
            ],
            want: Want::Inside("evil/planted", Some(b"inside")),
        },
        // Writing over a symlink that points outside replaces the link, never its target.
        Case {
            name: "overwrite-symlink",
            layers: vec![
                vec![Entry::Symlink("link", &abs_file)],
                vec![Entry::File("link", 0o644, b"replaced")],
            ],
            want: Want::Inside("link", Some(b"replaced")),
        },
        // Hard links to outside targets: an absolute target resolves inside DIR (and is absent).
        Case {
            name: "hardlink-absolute",
            layers: vec![vec![Entry::Link("hl", &abs_file)]],
            want: Want::Refused(missing),
        },
        Case {
            name: "hardlink-dotdot",
            layers: vec![vec![Entry::Link("hl", "../canary/secret")]],
            want: Want::Refused(&["hl", ".."]),
        },
        // A hard link through a lower symlink is not followed either.
        Case {
            name: "hardlink-through-symlink",
            layers: vec![vec![Entry::Symlink("lnk", &c)], vec![Entry::Link("hl", "lnk/secret")]],
            want: Want::Refused(missing),
        },
        // A hard link to a symlink that points outside links the symlink itself.
        Case {
            name: "hardlink-to-symlink",
            layers: vec![vec![Entry::Symlink("lnk", &abs_file), Entry::Link("hl", "lnk")]],
            want: Want::Inside("hl", None),
        },
        // A whiteout cannot reach outside either.
        Case {
            name: "whiteout-dotdot",
            layers: vec![vec![Entry::File("../canary/.wh.secret", 0o644, b"")]],
            want: Want::Refused(&[]),
        },
    ];
    for case in cases {
        let name = case.name;
        let (out, dest) = pull_hostile(name, case.layers, &registry, w, &canary);
        match case.want {
            Want::Inside(path, bytes) => {
                assert_ok(&out);
                let p = dest.join(path);
                match bytes {
                    Some(b) => {
                        assert!(!p.is_symlink(), "{name}: {path} is a symlink");
                        assert_eq!(std::fs::read(&p).unwrap(), b, "{name}: {path}");
                    }
                    None => assert!(p.is_symlink(), "{name}: {path} is not a symlink"),
                }
                // Every parent of what the layer wrote is a real directory inside DIR.
                for parent in Path::new(path)
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                {
                    let d = dest.join(parent);
                    assert!(
                        d.is_dir() && !d.is_symlink(),
                        "{name}: {} is not a directory",
                        d.display()
                    );
                }
            }
            Want::Refused(words) => {
                let err = assert_failed(&out);
                for word in words {
                    assert!(err.contains(word), "{name}: {word:?} not in: {err}");
                }
            }
        }
    }
}
