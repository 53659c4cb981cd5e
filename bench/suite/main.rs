//! The benchmark suite: lazy pull against full extraction, HelloBench-style (start a program
//! from the image and wait until it exits), on real images built from Debian packages, over
//! emulated links (the engine's relay, [`lamina::bench::link`]), all modes in the same run.
//!
//! ```text
//! cargo bench --bench suite -- [--workloads distro,python,app,weights] [--links L1,L2,..]
//!                              [--reps N] [--modes m1,m2,..] [--budget SECONDS|none]
//!   L = unlimited/1ms | 100mbit/20ms | 20mbit/50ms | 10mbit/150ms | RATE/RTT
//! ```
//!
//! Budget (default 900 s for the whole command): the fastest link runs every mode and every
//! repetition. From what it measured (seconds, blob bytes, requests per workload and mode)
//! the suite predicts each run on the slower links (seconds + bytes ÷ rate + requests × RTT)
//! and runs, in this order while the prediction fits the budget: one run of each lazy mode and
//! `local` on every link (always, even over budget: they are what is measured), one run of the
//! full modes (fastest links first), then further repetitions. A full mode on a link the budget
//! left out is written as an **estimate** (`est.` in the table, `estimated` in the CSV), never as
//! a measurement; `--budget none` measures everything.
//!
//! Modes per workload and link: `skopeo+umoci` (skopeo copy + umoci unpack + run), `full`
//! (lamina pull + run), `lazy-cold` (lamina mount + run, empty cache), `lazy-profile` (the
//! same, with the access profile another cache recorded and pushed to the registry, found there
//! by the mount), `lazy-gzindex` (the gzip image as made, with the indexes `lamina index` pushed
//! beside it, found by the mount; empty cache), `lazy-warm` (the same, cache kept), `local` (run in an already extracted tree: the floor for warm runs). Per run:
//! time to ready, blob bytes and requests seen by the registry, peak RSS of lamina. The floor
//! of a lazy run = bytes the program needs ÷ rate + 4 round trips (manifest, config, TOCs in
//! parallel, data); "needs" = the compressed share of the files the program opened (strace on
//! the local tree) at the image's compression ratio.
//!
//! Output: `bench/results/<date>-<host>/suite.csv` (one row per workload, link and mode),
//! `suite-runs.csv` (every run), `suite.md` (medians with min–max, ratios lazy/full and
//! lazy/floor), `suite-startup.svg|png` and `suite-bytes.svg|png`. A mode that failed is
//! written as failed, with its error.
//!
//! The suite is a thin caller of the engine `lamina bench` uses ([`lamina::bench`]: links,
//! measurements, budget, statistics, report, plots): this crate only builds the images
//! ([`workloads`]) and reads its options ([`options`]).

#[allow(dead_code)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../common.rs"]
mod common;

mod options;
mod workloads;

use std::process::Command;

use lamina::bench::report::Report;
use lamina::bench::{Interrupt, Settings};
use support::registry::TestRegistry;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::require_tools(&["docker-registry", "skopeo", "umoci", "strace", "chroot"]) || !support::require_root()
    {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    support::run(
        Command::new("cargo")
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(format!("{root}/Cargo.toml")),
    );
    let started = std::time::Instant::now();
    let opts = options::Options::parse();
    let machine = lamina::bench::machine();
    println!("machine: {machine}");

    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let workloads = workloads::publish_all(root, &registry, work.path(), &opts.workloads);
    let settings = Settings {
        lamina: common::lamina_path(root),
        lamina_env: Vec::new(),
        work: work.path().join("runs"),
        links: opts.links.clone(),
        modes: opts.modes.clone(),
        reps: opts.reps,
        // The images were built and published on the budget's clock.
        budget_secs: opts.budget - started.elapsed().as_secs_f64(),
        drop_caches: true,
        push_profile: true,
        progress: false,
        interrupt: Interrupt::default(),
    };
    std::fs::create_dir_all(&settings.work).unwrap();
    let results = lamina::bench::sweep::measure(&settings, &workloads, &mut |l| println!("{l}"));
    lamina::bench::clean_up(&settings.lamina, &settings.work);
    println!("suite ran in {:.0} s", started.elapsed().as_secs_f64());
    let report = Report {
        title: "lamina benchmark suite".into(),
        command: format!(
            "cargo bench --bench suite -- {}",
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        ),
        machine,
        links: &opts.links,
        modes: &opts.modes,
        workloads: workloads.iter().map(|w| (w.name.clone(), w.command_line())).collect(),
        results: &results,
    };
    let dir = common::results_dir(root);
    report.write(&dir, "suite").unwrap();
    println!("\n{}", report.markdown());
    println!("results in {}", dir.display());
}
