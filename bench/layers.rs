//! Micro benchmark: how `lamina mount` scales with the number of layers and entries, on
//! synthetic images (1–50 layers, up to 200,000 entries) served by a loopback registry.
//!
//! Each image spreads its entries over its layers: every layer adds its own directory tree
//! (`lN/dDDD/fFFFF`, empty files, as most files of a real image are small) and overwrites the
//! same 100 files of a shared `etc/`, so the merge has names to override. Per image, medians
//! of 3: `lamina mount` with an empty cache (manifest, config, one TOC request per layer,
//! index, merge), with the per-layer indexes cached, and a `find` over the whole mount, whose
//! entry count is checked against what the image holds.
//!
//! Run: `cargo bench --bench layers [-- --grid 1x10000,10x200000,…]` (root, FUSE).

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{drop_caches, lamina, median, timed};
use support::layout::{Entry, Layer, Layout};
use support::registry::TestRegistry;
use support::run;

const RUNS: usize = 3;
const DEFAULT_GRID: &str = "1x10000,1x200000,10x10000,10x200000,50x10000,50x200000";
const SHARED: usize = 100;

/// The tar of layer `i` with about `n` entries (directories included), and its entry count.
fn layer_tar(i: usize, n: usize) -> (Vec<u8>, usize) {
    let mut names: Vec<(String, bool)> = vec![("etc".into(), true), (format!("l{i}"), true)];
    for k in 0..SHARED.min(n) {
        names.push((format!("etc/shared{k}"), false));
    }
    let mut k = 0;
    while names.len() < n.max(2) {
        if k % 1000 == 0 {
            names.push((format!("l{i}/d{}", k / 1000), true));
        }
        names.push((format!("l{i}/d{}/f{k}", k / 1000), false));
        k += 1;
    }
    let entries: Vec<Entry> = names
        .iter()
        .map(|(name, dir)| {
            if *dir {
                Entry::Dir(name, 0o755)
            } else {
                Entry::File(name, 0o644, b"")
            }
        })
        .collect();
    (support::layout::tar_bytes(&entries), names.len())
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::require_tools(&["docker-registry", "skopeo"]) || !support::require_root() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    run(Command::new("cargo")
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(format!("{root}/Cargo.toml")));
    let grid: Vec<(usize, usize)> = arg("--grid")
        .unwrap_or_else(|| DEFAULT_GRID.into())
        .split(',')
        .map(|g| {
            let (l, e) = g.split_once('x').expect("grid item LAYERSxENTRIES");
            (l.parse().expect("layers"), e.parse().expect("entries"))
        })
        .collect();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let machine = common::machine();
    println!("machine: {machine}\n");
    let mut md = format!(
        "# mount time against layers and entries\n\nmachine: {machine}  \ncommand: `cargo bench --bench layers`  \n\
         loopback registry, zstd:chunked images made by `lamina convert`, medians of {RUNS}\n\n\
         | layers | entries | mount, cold cache (s) | mount, indexes cached (s) | find over the mount (s) | entries seen |\n|---|---|---|---|---|---|\n"
    );
    println!("{}", md.lines().skip(5).collect::<Vec<_>>().join("\n"));
    for (layers, entries) in grid {
        let per = entries / layers;
        // The root and etc/ with its shared files once, every layer's own entries.
        let shared = SHARED.min(per);
        let mut expected = 2 + shared;
        let built: Vec<Layer> = (0..layers)
            .map(|i| {
                let (tar, n) = layer_tar(i, per);
                expected += n - 1 - shared;
                Layer::gzip_tar(&tar)
            })
            .collect();
        let mut l = Layout::create(&w.join(format!("layout-{layers}x{entries}")));
        let d = l.image(&built, "amd64");
        l.tag("t", d);
        drop(built);
        let repo = format!("{}/synthetic/l{layers}e{entries}", registry.addr);
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:t", l.dir.display()))
            .arg(format!("docker://{repo}:gzip")));
        run(lamina(root)
            .args(["convert", &format!("{repo}:gzip"), &format!("{repo}:zc")])
            .env("LAMINA_CACHE_DIR", w.join("convert-cache")));
        let _ = std::fs::remove_dir_all(&l.dir);
        let mnt = w.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mount = |cache: &Path| {
            run(lamina(root)
                .arg("mount")
                .arg(format!("{repo}:zc"))
                .arg(&mnt)
                .env("LAMINA_CACHE_DIR", cache));
        };
        let umount = || {
            run(lamina(root).arg("umount").arg(&mnt));
        };
        let (mut cold, mut warm, mut walk) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = 0;
        for r in 0..RUNS {
            let cache = w.join(format!("cache-{layers}x{entries}-{r}"));
            drop_caches();
            cold.push(timed(|| mount(&cache)));
            umount();
            drop_caches();
            warm.push(timed(|| mount(&cache)));
            let mut out = Vec::new();
            walk.push(timed(|| {
                out = run(Command::new("find").arg(&mnt)).stdout;
            }));
            seen = out.iter().filter(|b| **b == b'\n').count();
            umount();
            let _ = std::fs::remove_dir_all(&cache);
        }
        assert_eq!(
            seen, expected,
            "{layers} layers × {entries} entries: the mount shows {seen} entries, the image holds {expected}"
        );
        let s = |v: Vec<Duration>| median(v).as_secs_f64();
        let line = format!(
            "| {layers} | {entries} | {:.3} | {:.3} | {:.3} | {seen} |",
            s(cold),
            s(warm),
            s(walk)
        );
        println!("{line}");
        writeln!(md, "{line}").unwrap();
    }
    let dir = common::results_dir(root);
    std::fs::write(dir.join("layers.md"), &md).unwrap();
    println!("\nwritten to {}", dir.join("layers.md").display());
}
