//! Benchmark of `lamina mount` against the full pull and against overlay filesystems, in one
//! run on this machine, on loopback (link emulation is the bench suite's job):
//!
//! 1. Start-up: mount + `python3 /app/hello.py` (cold cache, warm cache) against
//!    `lamina pull` + the same command, on the Debian demo image.
//! 2. Metadata walk (`find -printf` of type, size, mode of every entry, page cache warm):
//!    lamina against kernel overlayfs and fuse-overlayfs over the pulled tree.
//! 3. Sequential read of a 256 MiB file with its chunks in the cache (page cache dropped)
//!    against the same file on local disk.
//!
//! Run: `cargo bench --bench mount` (root, FUSE, the tools of scripts/setup.sh).

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::registry::TestRegistry;
use support::run;

const RUNS: usize = 3;

use common::{drop_caches, lamina, median, timed};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn walk(dir: &Path) {
    run(Command::new("find")
        .arg(dir)
        .args(["-printf", "%y %s %m\\n"])
        .stdout(std::process::Stdio::null()));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::require_tools(&["docker-registry", "skopeo", "umoci", "fuse-overlayfs"]) || !support::require_root() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let image = common::release_and_demo_image(root);
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (src, lazy) = common::publish_demo(root, &registry.addr, &image, w);
    println!("machine: {}", common::machine());
    println!("image:   {image} (converted to zstd:chunked), loopback registry, medians of {RUNS}\n");

    // 1. Start-up.
    let (mut cold, mut warm, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let mnt = w.join(format!("mnt{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let cache = w.join(format!("cache{i}"));
        drop_caches();
        cold.push(timed(|| {
            run(lamina(root)
                .arg("mount")
                .arg(&lazy)
                .arg(&mnt)
                .env("LAMINA_CACHE_DIR", &cache));
            run(Command::new("chroot")
                .arg(&mnt)
                .args(["python3", "/app/hello.py"])
                .stdout(std::process::Stdio::null()));
        }));
        run(lamina(root).arg("umount").arg(&mnt));
        std::thread::sleep(Duration::from_millis(300));
        drop_caches();
        warm.push(timed(|| {
            run(lamina(root)
                .arg("mount")
                .arg(&lazy)
                .arg(&mnt)
                .env("LAMINA_CACHE_DIR", &cache));
            run(Command::new("chroot")
                .arg(&mnt)
                .args(["python3", "/app/hello.py"])
                .stdout(std::process::Stdio::null()));
        }));
        run(lamina(root).arg("umount").arg(&mnt));
        drop_caches();
        let tree = w.join(format!("tree{i}"));
        full.push(timed(|| {
            run(lamina(root).arg("pull").arg(&src).arg(&tree));
            run(Command::new("chroot")
                .arg(&tree)
                .args(["python3", "/app/hello.py"])
                .stdout(std::process::Stdio::null()));
        }));
    }
    let (c, wa, f) = (median(cold), median(warm), median(full));
    println!("| start-up: python3 /app/hello.py | seconds | ratio to full pull |");
    println!("|---|---|---|");
    println!("| lamina pull + run | {:.2} | 1.00 |", secs(f));
    println!(
        "| lamina mount + run, cold cache | {:.2} | {:.2} |",
        secs(c),
        secs(c) / secs(f)
    );
    println!(
        "| lamina mount + run, warm cache | {:.2} | {:.2} |",
        secs(wa),
        secs(wa) / secs(f)
    );

    // 2. Metadata walk over the whole tree, page cache warm (first walk not counted).
    let tree = w.join("tree0");
    let mnt = w.join("walk-lamina");
    std::fs::create_dir_all(&mnt).unwrap();
    run(lamina(root)
        .arg("mount")
        .arg(&lazy)
        .arg(&mnt)
        .env("LAMINA_CACHE_DIR", w.join("cache0")));
    let ovl = w.join("walk-ovl");
    let fovl = w.join("walk-fovl");
    for d in ["upper", "work", "fupper", "fwork"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    std::fs::create_dir_all(&ovl).unwrap();
    std::fs::create_dir_all(&fovl).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            w.join("upper").display(),
            w.join("work").display()
        ))
        .arg(&ovl));
    run(Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            w.join("fupper").display(),
            w.join("fwork").display()
        ))
        .arg(&fovl));
    let mut results = Vec::new();
    for (name, dir) in [("kernel overlayfs", &ovl), ("fuse-overlayfs", &fovl), ("lamina", &mnt)] {
        walk(dir);
        let t = median((0..RUNS).map(|_| timed(|| walk(dir))).collect());
        results.push((name, t));
    }
    let entries = String::from_utf8_lossy(&run(Command::new("find").arg(&tree)).stdout)
        .lines()
        .count();
    println!("\n| metadata walk ({entries} entries) | seconds | ratio to kernel overlayfs |");
    println!("|---|---|---|");
    for (name, t) in &results {
        println!("| {name} | {:.3} | {:.2} |", secs(*t), secs(*t) / secs(results[0].1));
    }
    run(Command::new("umount").arg(&ovl));
    run(Command::new("umount").arg(&fovl));
    run(lamina(root).arg("umount").arg(&mnt));

    // 3. Cached sequential read of a large file.
    let mut layout = support::layout::Layout::create(&w.join("big-layout"));
    let data = (0..256u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect::<Vec<u8>>();
    let tar = support::layout::tar_bytes(&[support::layout::Entry::File("weights.bin", 0o644, &data)]);
    let desc = layout.image(&[support::layout::Layer::plain(tar)], "amd64");
    layout.tag("t", desc);
    let big_src = format!("{}/bench/big:t", registry.addr);
    let big_lazy = format!("{}/bench/big:zc", registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", layout.dir.display()))
        .arg(format!("docker://{big_src}")));
    run(lamina(root)
        .args(["convert", &big_src, &big_lazy])
        .env("LAMINA_CACHE_DIR", w.join("convert-cache")));
    run(lamina(root).arg("pull").arg(&big_src).arg(w.join("big-tree")));
    let bmnt = w.join("big-mnt");
    std::fs::create_dir_all(&bmnt).unwrap();
    run(lamina(root)
        .arg("mount")
        .arg(&big_lazy)
        .arg(&bmnt)
        .env("LAMINA_CACHE_DIR", w.join("big-cache")));
    let read = |p: &Path| {
        drop_caches();
        let t = timed(|| {
            run(Command::new("dd")
                .arg(format!("if={}", p.display()))
                .args(["of=/dev/null", "bs=1M"]));
        });
        (256.0 * 1.048576) / secs(t)
    };
    let cold_mb_s = read(&bmnt.join("weights.bin"));
    let mut lam = Vec::new();
    let mut disk = Vec::new();
    for _ in 0..RUNS {
        lam.push(read(&bmnt.join("weights.bin")));
        disk.push(read(&w.join("big-tree/weights.bin")));
    }
    lam.sort_by(f64::total_cmp);
    disk.sort_by(f64::total_cmp);
    let (l, d) = (lam[RUNS / 2], disk[RUNS / 2]);
    println!("\n| sequential read, 256 MiB file, page cache dropped | MB/s | ratio to local disk |");
    println!("|---|---|---|");
    println!("| local disk (pulled tree) | {d:.0} | 1.00 |");
    println!("| lamina, chunks cached | {l:.0} | {:.2} |", l / d);
    println!(
        "| lamina, first read (fetch over loopback) | {cold_mb_s:.0} | {:.2} |",
        cold_mb_s / d
    );
    run(lamina(root).arg("umount").arg(&bmnt));
}
