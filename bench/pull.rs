//! Benchmark: `lamina pull` against `skopeo copy` + `umoci unpack` of the same real image from
//! the same local registry, in one run, on this machine. Prints the machine, each run, the
//! medians and the ratio. Run with `cargo bench --bench pull` (needs root and the tools from
//! scripts/setup.sh; the image is built by scripts/build-image.sh and cached).
//!
//! Environment: LAMINA_BENCH_RUNS (default 3), LAMINA_BENCH_IMAGE (an OCI layout `PATH:TAG`
//! to use instead of the Debian image).

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::process::Command;

use support::registry::TestRegistry;
use support::run;

use common::{drop_caches, median, timed};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    if !support::require_tools(&["docker-registry", "skopeo", "umoci"]) || !support::require_root() {
        return;
    }
    let runs: usize = std::env::var("LAMINA_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let root = env!("CARGO_MANIFEST_DIR");
    let image = std::env::var("LAMINA_BENCH_IMAGE").unwrap_or_else(|_| {
        let out = run(Command::new("bash").arg(format!("{root}/scripts/build-image.sh")));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let lamina = common::lamina_path(root).display().to_string();
    run(Command::new("cargo")
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(format!("{root}/Cargo.toml")));

    let registry = TestRegistry::start();
    let reference = format!("{}/bench/image:latest", registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{reference}")));

    println!("machine: {}", common::machine());
    println!("image:   {image} → {reference}");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        drop_caches();
        let t_base = timed(|| {
            run(Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:t", w.join("oci").display())));
            run(Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:t", w.join("oci").display()))
                .arg(w.join("bundle")));
        });
        drop_caches();
        let t_lamina = timed(|| {
            run(Command::new(&lamina)
                .args(["pull", "--quiet", &reference])
                .arg(w.join("root")));
        });
        println!(
            "run {}: skopeo+umoci {:>7.2} s   lamina pull {:>7.2} s",
            i + 1,
            t_base.as_secs_f64(),
            t_lamina.as_secs_f64()
        );
        theirs.push(t_base);
        ours.push(t_lamina);
    }
    let (o, t) = (median(ours), median(theirs));
    println!();
    println!("| measure (median of {runs}) | seconds |");
    println!("|---|---|");
    println!("| skopeo copy + umoci unpack | {:.2} |", t.as_secs_f64());
    println!("| lamina pull | {:.2} |", o.as_secs_f64());
    println!("| ratio lamina / baseline | {:.2} |", o.as_secs_f64() / t.as_secs_f64());
}
