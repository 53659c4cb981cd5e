//! The sweep: link by link (fastest first), start the relay, check the emulation, and run
//! every workload, repetition and mode; once the first link is done, the [`Plan`] says which
//! runs the slower links get and which full-mode runs are written as estimates instead.

use std::time::{Duration, Instant};

use crate::link::{self, Link, Relay, Validation};
use crate::options::Options;
use crate::plan::Plan;
use crate::run::{run_mode, Ctx};
use crate::stats::Sample;
use crate::support::registry::TestRegistry;
use crate::workloads::Workload;

/// Every run (or estimate) in the order made, and the link checks. `started` is when the
/// budget started.
pub fn measure(ctx: &Ctx, opts: &Options, workloads: &[Workload], started: Instant) -> (Vec<Sample>, Vec<Validation>) {
    let links = &opts.links;
    let mut samples: Vec<Sample> = Vec::new();
    let mut validations = Vec::new();
    let mut plan: Option<Plan> = None;
    for (li, l) in links.iter().enumerate() {
        let relay = link::start(*l, &ctx.registry.addr);
        // Validate with the largest blob of the first workload (a few seconds' worth of it).
        if let Some(wl) = workloads.first() {
            check_link(*l, &relay, ctx.registry, &wl.repo, &mut validations);
        }
        if li == 1 {
            let p = Plan::make(
                links,
                workloads,
                &opts.modes,
                opts.reps,
                &samples,
                opts.budget - started.elapsed().as_secs_f64(),
            );
            println!("{}", p.summary);
            plan = Some(p);
        }
        for (wi, wl) in workloads.iter().enumerate() {
            let cache = ctx.work.join(format!("cache-{}", wl.name));
            for rep in 0..opts.reps {
                for (mi, mode) in opts.modes.iter().enumerate() {
                    let sample = |result, estimated| Sample {
                        workload: wl.name.into(),
                        link: l.name(),
                        mode: mode.clone(),
                        rep,
                        result,
                        estimated,
                    };
                    if let Some(p) = &plan {
                        if !p.runs.contains(&(li, wi, mi, rep)) {
                            if let (0, Some(f)) = (rep, p.estimates.get(&(li, wi, mi))) {
                                println!(
                                    "{:<8} {:<16} {:<13} rep {rep}: {:>7.2} s  estimated (budget)",
                                    wl.name,
                                    l.name(),
                                    mode,
                                    f.seconds
                                );
                                samples.push(sample(Ok(*f), true));
                            }
                            continue;
                        }
                    }
                    let result = run_mode(ctx, wl, &relay.addr, mode, &rep.to_string(), &cache);
                    match &result {
                        Ok(f) => println!(
                            "{:<8} {:<16} {:<13} rep {rep}: {:>7.2} s {:>9.1} MB {:>5} requests",
                            wl.name,
                            l.name(),
                            mode,
                            f.seconds,
                            f.bytes as f64 / 1e6,
                            f.requests
                        ),
                        Err(e) => println!("{:<8} {:<16} {:<13} rep {rep}: FAILED {e}", wl.name, l.name(), mode),
                    }
                    samples.push(sample(result, false));
                }
            }
        }
    }
    (samples, validations)
}

/// Check the link's emulation with the largest blob of `repo` (up to 200 MiB). A check
/// disturbed by other work on the machine (the first link's check runs right after the images
/// are built) is measured once more; both attempts are printed and kept in the report.
fn check_link(l: Link, relay: &Relay, registry: &TestRegistry, repo: &str, validations: &mut Vec<Validation>) {
    let Some(path) = largest_blob_path(registry, repo, 200 << 20) else {
        return;
    };
    let v = link::validate(l, &relay.addr, &registry.addr, &path);
    println!("{}", v.line());
    let failed = !v.passes();
    validations.push(v);
    if failed {
        std::thread::sleep(Duration::from_secs(5));
        let again = link::validate(l, &relay.addr, &registry.addr, &path);
        println!("{} (second attempt)", again.line());
        validations.push(again);
    }
}

/// The largest blob of `repo` up to `cap` bytes, as a registry path.
fn largest_blob_path(registry: &TestRegistry, repo: &str, cap: u64) -> Option<String> {
    // The registry links a repository's layers under repositories/<repo>/_layers/sha256/<hex>
    // and stores the bytes under blobs/sha256/<ab>/<hex>/data.
    let v2 = registry.storage().join("docker/registry/v2");
    let mut best: Option<(u64, String)> = None;
    for link in std::fs::read_dir(v2.join("repositories").join(repo).join("_layers/sha256")).ok()? {
        let hex = link.ok()?.file_name().to_string_lossy().to_string();
        let size = std::fs::metadata(v2.join("blobs/sha256").join(&hex[..2]).join(&hex).join("data"))
            .ok()?
            .len();
        if best.as_ref().is_none_or(|(s, _)| size > *s) && size <= cap {
            best = Some((size, hex));
        }
    }
    best.map(|(_, hex)| format!("/v2/{repo}/blobs/sha256:{hex}"))
}
