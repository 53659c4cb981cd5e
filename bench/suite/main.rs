//! The benchmark suite: lazy pull against full extraction, HelloBench-style (start a program
//! from the image and wait until it exits), on real images built from Debian packages, over
//! emulated links ([`link`]), all modes in the same run.
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
//! Modes per workload and link: `skopeo+umoci` (skopeo copy + umoci unpack + run), `pull`
//! (lamina pull + run), `lazy-cold` (lamina mount + run, empty cache), `lazy-profile` (the
//! same, with the access profile another cache recorded and pushed to the registry, found there
//! by the mount), `lazy-gzindex` (the gzip image as made, with the indexes `lamina index` pushed
//! beside it, found by the mount; empty cache), `lazy-warm` (the same, cache kept), `local` (run in an already extracted tree: the floor for warm runs). Per run:
//! time to ready, blob bytes and requests seen by the registry, peak RSS of lamina. The floor
//! of a lazy run = bytes the program needs ÷ rate + 4 round trips (manifest, config, TOCs in
//! parallel, data); "needs" = the compressed share of the files the program opened (strace on
//! the local tree) at the image's compression ratio.
//!
//! Output: `bench/results/<date>-<host>/suite.csv`, `suite.md` (medians with min–max, ratios
//! lazy/full and lazy/floor), `suite-startup.svg|png` and `suite-bytes.svg|png`. A mode that
//! failed is written as failed, with its error.
//!
//! Modules: [`options`] (command line), [`workloads`] (images and their commands), [`sweep`]
//! (links × workloads × repetitions × modes), [`plan`] (the budget), [`run`] (one
//! measurement), [`stats`], [`report`] (CSV and markdown), [`plot`] (SVG and PNG).

#[allow(dead_code)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../common.rs"]
mod common;

#[path = "../link.rs"]
mod link;

mod options;
mod plan;
mod plot;
mod report;
mod run;
mod stats;
mod sweep;
mod workloads;

use std::process::Command;
use std::time::Instant;

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
    let started = Instant::now();
    let opts = options::Options::parse();
    let machine = common::machine();
    println!("machine: {machine}");

    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let workloads = workloads::publish_all(root, &registry, work.path(), &opts.workloads);
    let needed = workloads::local_trees(root, &registry, work.path(), &workloads);
    let ctx = run::Ctx {
        root,
        registry: &registry,
        work: work.path(),
    };
    let (samples, validations) = sweep::measure(&ctx, &opts, &workloads, started);
    println!("suite ran in {:.0} s", started.elapsed().as_secs_f64());
    report::write(root, &machine, &opts.links, &workloads, &samples, &validations, &needed);
}
