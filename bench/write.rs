//! Benchmark of lamina's writable layer against kernel overlayfs, fuse-overlayfs and plain
//! local disk, in one run on this machine (all upper directories on the same filesystem):
//!
//! 1. fio sequential write (1 MiB blocks, 512 MiB, fsync at the end) into a new file.
//! 2. fio random write (4 KiB blocks over a 128 MiB file, fsync at the end).
//! 3. Extracting a large tarball (the Debian demo image's whole tree) into the mount, then
//!    `sync`.
//!
//! lamina runs three times: as it mounts by default as root (kernel overlayfs over its
//! read-only view, `--overlay kernel`), and with its own overlay (`--overlay fuse`) with FUSE
//! passthrough (the default where the kernel has it) and with `--no-passthrough`. Ratios are
//! to kernel overlayfs and to local disk of the same run.
//!
//! Run: `cargo bench --bench write` (root, FUSE, fio, fuse-overlayfs: scripts/setup.sh).

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{drop_caches, lamina, median, timed};
use support::registry::TestRegistry;
use support::run;

const RUNS: usize = 3;

/// Where writes go: a directory inside a mounted target, unmounted when dropped.
struct Target {
    name: &'static str,
    dir: PathBuf,
    unmount: Option<Vec<String>>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(cmd) = &self.unmount {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
    }
}

struct Setup<'a> {
    root: &'a str,
    w: &'a Path,
    lower: &'a Path,
    image: &'a str,
    cache: &'a Path,
}

impl Setup<'_> {
    /// A fresh instance of target `name` (a fresh upper each time).
    fn target(&self, name: &'static str, n: usize) -> Target {
        let base = self.w.join(format!("{}-{n}", name.replace(' ', "-")));
        let mnt = base.join("mnt");
        for d in ["mnt", "upper", "work"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let overlay_opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            base.join("upper").display(),
            base.join("work").display()
        );
        let unmount = match name {
            "local disk" => None,
            "kernel overlayfs" => {
                run(Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o"])
                    .arg(&overlay_opts)
                    .arg(&mnt));
                Some(vec!["umount".into(), mnt.display().to_string()])
            }
            "fuse-overlayfs" => {
                run(Command::new("fuse-overlayfs").arg("-o").arg(&overlay_opts).arg(&mnt));
                Some(vec!["umount".into(), mnt.display().to_string()])
            }
            _ => {
                let mut c = lamina(self.root);
                c.arg("mount").arg("--upper").arg(base.join("lamina-upper"));
                c.args(["--overlay", if name.contains("fuse") { "fuse" } else { "kernel" }]);
                if name.contains("no passthrough") {
                    c.arg("--no-passthrough");
                }
                run(c.arg(self.image).arg(&mnt).env("LAMINA_CACHE_DIR", self.cache));
                Some(vec![
                    common::lamina_path(self.root).display().to_string(),
                    "umount".into(),
                    mnt.display().to_string(),
                ])
            }
        };
        let dir = mnt.join("bench-out");
        std::fs::create_dir_all(&dir).unwrap();
        Target { name, dir, unmount }
    }
}

const TARGETS: [&str; 6] = [
    "local disk",
    "kernel overlayfs",
    "fuse-overlayfs",
    "lamina",
    "lamina --overlay fuse",
    "lamina --overlay fuse, no passthrough",
];

/// fio's write bandwidth in MB/s.
fn fio(dir: &Path, args: &[&str]) -> f64 {
    let out = run(Command::new("fio")
        .arg("--name=w")
        .arg(format!("--directory={}", dir.display()))
        .args(["--ioengine=psync", "--end_fsync=1", "--output-format=json"])
        .args(args));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio JSON");
    v["jobs"][0]["write"]["bw_bytes"].as_f64().expect("bw_bytes") / 1e6
}

fn table(title: &str, unit: &str, results: &[(&str, f64)], higher_is_better: bool) {
    let get = |n: &str| results.iter().find(|r| r.0 == n).map_or(f64::NAN, |r| r.1);
    let (kovl, disk) = (get("kernel overlayfs"), get("local disk"));
    println!("\n| {title} | {unit} | ratio to kernel overlayfs | ratio to local disk |");
    println!("|---|---|---|---|");
    for (name, v) in results {
        let (rk, rd) = if higher_is_better {
            (v / kovl, v / disk)
        } else {
            (kovl / v, disk / v)
        };
        println!("| {name} | {v:.2} | {rk:.2} | {rd:.2} |");
    }
    if !higher_is_better {
        println!("\n(ratios are speed: time of the reference ÷ time of the target)");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::require_tools(&["docker-registry", "skopeo", "fio", "fuse-overlayfs", "tar"])
        || !support::require_root()
    {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let image = common::release_and_demo_image(root);
    let registry = TestRegistry::start();
    // On the disk (not /tmp, which may be tmpfs): every target's upper lives here.
    let work = tempfile::tempdir_in(common::target_dir(root)).unwrap();
    let w = work.path();
    let (src, lazy) = common::publish_demo(root, &registry.addr, &image, w);
    let lower = w.join("lower");
    run(lamina(root).arg("pull").arg(&src).arg(&lower));
    let tarball = w.join("tree.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&lower)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    let tar_mb = std::fs::metadata(&tarball).unwrap().len() as f64 / 1e6;
    let cache = w.join("cache");
    let setup = Setup {
        root,
        w,
        lower: &lower,
        image: &lazy,
        cache: &cache,
    };
    // Warm lamina's cache so the lower layer is local for every lamina run.
    drop(setup.target("lamina", 999));
    println!("machine: {}", common::machine());
    println!(
        "image:   {image}; uppers on {}; medians of {RUNS} runs, each on a fresh upper",
        w.display()
    );

    let mut seq = Vec::new();
    let mut rnd = Vec::new();
    let mut untar = Vec::new();
    for name in TARGETS {
        let (mut s, mut r, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..RUNS {
            let t = setup.target(name, i);
            drop_caches();
            s.push(fio(&t.dir, &["--rw=write", "--bs=1M", "--size=512M"]));
            drop_caches();
            r.push(fio(&t.dir, &["--rw=randwrite", "--bs=4k", "--size=128M"]));
            drop_caches();
            let dest = t.dir.join("tree");
            std::fs::create_dir_all(&dest).unwrap();
            x.push(timed(|| {
                run(Command::new("tar").arg("-C").arg(&dest).arg("-xf").arg(&tarball));
                run(&mut Command::new("sync"));
            }));
            eprintln!(
                "{:<24} run {i}: seq {:>7.1} MB/s, random {:>6.1} MB/s, extract {:.2} s",
                t.name,
                s[i],
                r[i],
                x[i].as_secs_f64()
            );
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        seq.push((name, med(s)));
        rnd.push((name, med(r)));
        untar.push((name, median(x).as_secs_f64()));
    }
    table(
        "fio sequential write, 1 MiB blocks, 512 MiB + fsync",
        "MB/s",
        &seq,
        true,
    );
    table("fio random write, 4 KiB blocks, 128 MiB + fsync", "MB/s", &rnd, true);
    table(
        &format!("extract a {tar_mb:.0} MB tarball (the image's tree) + sync"),
        "seconds",
        &untar,
        false,
    );
}
