//! Shared by the benchmarks: a description of the machine they ran on, and the few helpers
//! every benchmark needs.

use std::process::Command;
use std::time::{Duration, Instant};

/// Write back the last run's files, then empty the page cache, so every run starts alike:
/// no earlier run's writeback competes with it, and the registry's blobs come from disk.
pub fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The middle of some timings.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// How long `f` takes.
pub fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (several checkouts building at once
/// keep their own), else `target/` of this checkout.
pub fn target_dir(root: &str) -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => std::path::Path::new(root).join(d),
        None => std::path::Path::new(root).join("target"),
    }
}

/// The release build of lamina in this checkout.
pub fn lamina_path(root: &str) -> std::path::PathBuf {
    target_dir(root).join("release/lamina")
}

/// The release build of lamina in this checkout, quiet.
pub fn lamina(root: &str) -> Command {
    let mut c = Command::new(lamina_path(root));
    c.arg("--quiet");
    c
}

/// Cores, CPU model, memory and kernel (as `lamina bench` records them).
pub fn machine() -> String {
    lamina::bench::machine()
}

/// `bench/results/<date>-<host>/` of this checkout, created.
/// `$LAMINA_BENCH_RESULTS` when set (scripts/bench.sh sets it, so a run that passes midnight
/// keeps one folder).
pub fn results_dir(root: &str) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("LAMINA_BENCH_RESULTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        return dir;
    }
    let out = |c: &mut Command| {
        c.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let host = out(&mut Command::new("hostname"));
    let date = out(Command::new("date").arg("+%Y-%m-%d"));
    let dir = std::path::PathBuf::from(root)
        .join("bench/results")
        .join(format!("{date}-{}", if host.is_empty() { "host" } else { &host }));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The release build of this checkout, then the Debian demo image of scripts/build-image.sh
/// (built once, cached): its OCI layout reference.
pub fn release_and_demo_image(root: &str) -> String {
    must(
        Command::new("cargo")
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(format!("{root}/Cargo.toml")),
    );
    let out = must(Command::new("bash").arg(format!("{root}/scripts/build-image.sh")));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Push the layout image `image` to `registry` as `bench/debian:latest` and convert it to
/// `bench/debian:zstd-chunked`: (source, lazy) references.
pub fn publish_demo(root: &str, registry: &str, image: &str, work: &std::path::Path) -> (String, String) {
    let src = format!("{registry}/bench/debian:latest");
    let lazy = format!("{registry}/bench/debian:zstd-chunked");
    must(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{image}"))
            .arg(format!("docker://{src}")),
    );
    must(
        lamina(root)
            .args(["convert", &src, &lazy])
            .env("LAMINA_CACHE_DIR", work.join("convert-cache")),
    );
    (src, lazy)
}

/// Run `cmd`, panicking with its output if it fails.
fn must(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
