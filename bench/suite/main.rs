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
//! (lamina pull + run), `lazy-cold` (lamina mount + run, empty cache), `lazy-warm` (the same,
//! cache kept), `local` (run in an already extracted tree: the floor for warm runs). Per run:
//! time to ready, blob bytes and requests seen by the registry, peak RSS of lamina. The floor
//! of a lazy run = bytes the program needs ÷ rate + 4 round trips (manifest, config, TOCs in
//! parallel, data); "needs" = the compressed share of the files the program opened (strace on
//! the local tree) at the image's compression ratio.
//!
//! Output: `bench/results/<date>-<host>/suite.csv`, `suite.md` (medians with min–max, ratios
//! lazy/full and lazy/floor), `suite-startup.svg|png` and `suite-bytes.svg|png`. A mode that
//! failed is written as failed, with its error.

#[allow(dead_code)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../common.rs"]
mod common;

#[path = "../link.rs"]
mod link;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use link::Link;
use support::layout::{Entry, Layer, Layout};
use support::registry::TestRegistry;
use support::run;

const MODES: [&str; 5] = ["skopeo+umoci", "pull", "lazy-cold", "lazy-warm", "local"];
const DEFAULT_LINKS: &str = "unlimited/1ms,100mbit/20ms,20mbit/50ms,10mbit/150ms";
/// Seconds the whole suite may take unless `--budget` says otherwise.
const DEFAULT_BUDGET: f64 = 900.0;

struct Workload {
    name: &'static str,
    /// Image built in the registry: `gzip` (as made) and `zc` (converted) tags.
    repo: String,
    cmd: Vec<String>,
}

#[derive(Clone)]
struct Sample {
    workload: String,
    link: String,
    mode: String,
    rep: usize,
    result: Result<RunFigures, String>,
    /// A prediction written where the budget left a full-pull run out, not a measurement.
    estimated: bool,
}

#[derive(Clone, Copy, Default)]
struct RunFigures {
    seconds: f64,
    bytes: u64,
    requests: u64,
    rss_kb: u64,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

use common::{drop_caches, lamina};

/// Run a command; Err with its stderr if it fails.
fn try_run(c: &mut Command) -> Result<std::process::Output, String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{:?} failed: {}",
            c.get_program(),
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        ))
    }
}

fn chroot_cmd(root: &Path, cmd: &[String]) -> Command {
    let mut c = Command::new("/usr/sbin/chroot");
    c.arg(root)
        .args(cmd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    c.stdout(std::process::Stdio::null());
    c
}

/// Peak RSS (KiB) of a command run under GNU time.
fn timed_rss(c: &mut Command, rss_file: &Path) -> Command {
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file)
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    t
}

fn read_rss(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.lines().last()?.trim().parse().ok())
        .unwrap_or(0)
}

fn daemon_hwm_kb(mount_stdout: &str) -> u64 {
    let pid = mount_stdout
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split([',', ')']).next())
        .unwrap_or("");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Ctx<'a> {
    root: &'a str,
    registry: &'a TestRegistry,
    work: &'a Path,
}

/// One run of `mode`; `tree` is where `pull` extracted (used by `local`).
fn run_mode(
    ctx: &Ctx,
    wl: &Workload,
    relay: &str,
    mode: &str,
    tag: &str,
    warm_cache: &Path,
) -> Result<RunFigures, String> {
    let gzip_ref = format!("{relay}/{}:gzip", wl.repo);
    let zc_ref = format!("{relay}/{}:zc", wl.repo);
    let dir = ctx.work.join(format!("run-{}-{mode}-{tag}", wl.name));
    let _ = Command::new("umount").arg("-l").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    let rss_file = ctx.work.join("rss");
    let _ = std::fs::remove_file(&rss_file);
    drop_caches();
    let before = ctx.registry.settled_blob_gets(&wl.repo, None);
    let t = Instant::now();
    let mut rss = 0;
    match mode {
        "skopeo+umoci" => {
            let layout = ctx.work.join(format!("skopeo-{}", wl.name));
            let _ = std::fs::remove_dir_all(&layout);
            try_run(
                Command::new("skopeo")
                    .args(["copy", "--quiet", "--src-tls-verify=false"])
                    .arg(format!("docker://{gzip_ref}"))
                    .arg(format!("oci:{}:t", layout.display())),
            )?;
            try_run(
                Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:t", layout.display()))
                    .arg(&dir),
            )?;
            try_run(&mut chroot_cmd(&dir.join("rootfs"), &wl.cmd))?;
            let _ = std::fs::remove_dir_all(&layout);
        }
        "pull" => {
            let mut c = lamina(ctx.root);
            c.arg("pull").arg(&gzip_ref).arg(&dir);
            try_run(&mut timed_rss(&mut c, &rss_file))?;
            rss = read_rss(&rss_file);
            try_run(&mut chroot_cmd(&dir, &wl.cmd))?;
        }
        "lazy-cold" | "lazy-warm" => {
            if mode == "lazy-cold" {
                let _ = std::fs::remove_dir_all(warm_cache);
            }
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let out = try_run(
                lamina(ctx.root)
                    .arg("mount")
                    .arg(&zc_ref)
                    .arg(&dir)
                    .env("LAMINA_CACHE_DIR", warm_cache),
            )?;
            let ran = try_run(&mut chroot_cmd(&dir, &wl.cmd));
            rss = daemon_hwm_kb(&String::from_utf8_lossy(&out.stdout));
            let elapsed = t.elapsed();
            let _ = lamina(ctx.root).arg("umount").arg(&dir).status();
            ran?;
            let after = ctx.registry.settled_blob_gets(&wl.repo, None);
            return Ok(RunFigures {
                seconds: elapsed.as_secs_f64(),
                requests: (after.0 - before.0) as u64,
                bytes: after.1 - before.1,
                rss_kb: rss,
            });
        }
        "local" => {
            let tree = ctx.work.join(format!("local-{}", wl.name));
            let t0 = Instant::now();
            try_run(&mut chroot_cmd(&tree, &wl.cmd))?;
            return Ok(RunFigures {
                seconds: t0.elapsed().as_secs_f64(),
                ..RunFigures::default()
            });
        }
        other => return Err(format!("unknown mode {other}")),
    }
    let elapsed = t.elapsed();
    let after = ctx.registry.settled_blob_gets(&wl.repo, None);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunFigures {
        seconds: elapsed.as_secs_f64(),
        requests: (after.0 - before.0) as u64,
        bytes: after.1 - before.1,
        rss_kb: rss,
    })
}

/// Push `layout:tag` as `repo:gzip` and its zstd:chunked conversion as `repo:zc`.
fn publish(root: &str, registry: &TestRegistry, layout: &str, repo: &str, work: &Path) {
    let src = format!("{}/{repo}:gzip", registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker://{src}")));
    run(lamina(root)
        .args(["convert", &src, &format!("{}/{repo}:zc", registry.addr)])
        .env("LAMINA_CACHE_DIR", work.join("convert-cache")));
}

/// Files the command opens (strace on the extracted tree): total bytes.
fn opened_bytes(tree: &Path, cmd: &[String], work: &Path) -> u64 {
    let trace = work.join("trace");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", "trace=openat,execve", "-o"])
        .arg(&trace)
        .arg("/usr/sbin/chroot")
        .arg(tree)
        .args(cmd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = c.status();
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines() {
        if l.contains("= -1") || l.contains("O_DIRECTORY") {
            continue;
        }
        if let Some(p) = l.split('"').nth(1) {
            if p.starts_with('/') {
                seen.insert(p.to_string());
            }
        }
    }
    seen.iter()
        .filter_map(|p| std::fs::metadata(tree.join(p.trim_start_matches('/'))).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::require_tools(&["docker-registry", "skopeo", "umoci", "strace", "chroot"]) || !support::require_root()
    {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    run(Command::new("cargo")
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(format!("{root}/Cargo.toml")));
    let started = Instant::now();
    let reps: usize = arg("--reps").and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let budget: f64 = match arg("--budget").as_deref() {
        None => DEFAULT_BUDGET,
        Some("none") => f64::INFINITY,
        Some(b) => b.parse().unwrap_or_else(|e| panic!("--budget {b}: {e}")),
    };
    let mut links: Vec<Link> = arg("--links")
        .unwrap_or_else(|| DEFAULT_LINKS.into())
        .split(',')
        .map(|l| Link::parse(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    // Fastest first: its runs predict the others'.
    links.sort_by_key(|l| (std::cmp::Reverse(l.rate_bps.unwrap_or(u64::MAX)), l.rtt));
    let wanted: Vec<String> = arg("--workloads")
        .unwrap_or_else(|| "distro,python,app,weights".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let modes: Vec<String> = arg("--modes")
        .map(|m| m.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| MODES.iter().map(|m| m.to_string()).collect());
    let machine = common::machine();
    println!("machine: {machine}");

    // Images: the Debian image of scripts/build-image.sh (its base layer alone is the distro
    // image), and a large-file image (distro + a 128 MiB "weights" file).
    let python_layout =
        String::from_utf8_lossy(&run(Command::new("bash").arg(format!("{root}/scripts/build-image.sh"))).stdout)
            .trim()
            .to_string();
    let cache_root = Path::new(python_layout.split(':').next().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let minbase = cache_root.join("minbase");
    let base_tar = w.join("base.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&minbase)
        .arg("-cf")
        .arg(&base_tar)
        .arg("."));
    let base = Layer::gzip_tar(&std::fs::read(&base_tar).unwrap());
    let mut workloads = Vec::new();
    if wanted.iter().any(|x| x == "distro") {
        let mut l = Layout::create(&w.join("distro-layout"));
        let d = l.image(std::slice::from_ref(&base), "amd64");
        l.tag("t", d);
        publish(root, &registry, &format!("{}:t", l.dir.display()), "suite/distro", w);
        workloads.push(Workload {
            name: "distro",
            repo: "suite/distro".into(),
            cmd: vec!["sh".into(), "-c".into(), "true".into()],
        });
    }
    if wanted.iter().any(|x| x == "python") {
        publish(root, &registry, &python_layout, "suite/python", w);
        workloads.push(Workload {
            name: "python",
            repo: "suite/python".into(),
            cmd: vec![
                "python3".into(),
                "-c".into(),
                "import json, yaml, email.parser, http.client, decimal; print('ready')".into(),
            ],
        });
    }
    if wanted.iter().any(|x| x == "app") {
        let app_layout = String::from_utf8_lossy(
            &run(Command::new("bash")
                .arg(format!("{root}/scripts/build-image.sh"))
                .arg("app"))
            .stdout,
        )
        .trim()
        .to_string();
        publish(root, &registry, &app_layout, "suite/app", w);
        workloads.push(Workload {
            name: "app",
            repo: "suite/app".into(),
            cmd: ["gcc", "-pipe", "-c", "/app/hello.c", "-o", "/dev/null"]
                .map(String::from)
                .to_vec(),
        });
    }
    if wanted.iter().any(|x| x == "weights") {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let weights: Vec<u8> = (0..128u32 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 61) as u8 // some redundancy, as float weights have
            })
            .collect();
        let tar = support::layout::tar_bytes(&[
            Entry::Dir("models", 0o755),
            Entry::File("models/weights.bin", 0o644, &weights),
        ]);
        drop(weights);
        let top = Layer::gzip_tar(&tar);
        drop(tar);
        let mut l = Layout::create(&w.join("weights-layout"));
        let d = l.image(&[base.clone(), top], "amd64");
        l.tag("t", d);
        publish(root, &registry, &format!("{}:t", l.dir.display()), "suite/weights", w);
        workloads.push(Workload {
            name: "weights",
            repo: "suite/weights".into(),
            cmd: vec!["sh".into(), "-c".into(), "cat /models/weights.bin > /dev/null".into()],
        });
    }

    // Extracted trees for `local` and the needed-bytes estimate; image sizes.
    let mut needed: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for wl in &workloads {
        let tree = w.join(format!("local-{}", wl.name));
        run(lamina(root)
            .arg("pull")
            .arg(format!("{}/{}:zc", registry.addr, wl.repo))
            .arg(&tree));
        let opened = opened_bytes(&tree, &wl.cmd, w);
        // Compression ratio of the converted image: layer blob bytes ÷ tree bytes.
        let du = String::from_utf8_lossy(&run(Command::new("du").args(["-sb"]).arg(&tree)).stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(1.0);
        let raw = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{}:zc", registry.addr, wl.repo)))
        .stdout;
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let compressed: f64 = manifest["layers"]
            .as_array()
            .map(|ls| ls.iter().filter_map(|l| l["size"].as_f64()).sum())
            .unwrap_or(du);
        needed.insert(wl.name, (opened, compressed / du));
    }

    let mut samples: Vec<Sample> = Vec::new();
    let mut validations = Vec::new();
    let ctx = Ctx {
        root,
        registry: &registry,
        work: w,
    };
    let mut plan: Option<Plan> = None;
    for (li, l) in links.iter().enumerate() {
        let relay = link::start(*l, &registry.addr);
        // Validate with the largest blob of the first workload (a few seconds' worth of it).
        if let Some(wl) = workloads.first() {
            if let Some(path) = largest_blob_path(&registry, &wl.repo, 200 << 20) {
                // A check disturbed by other work on the machine (the first link's check
                // runs right after the images are built) is measured once more; both
                // attempts are printed and kept in the report.
                let v = link::validate(*l, &relay.addr, &registry.addr, &path);
                println!("{}", v.line());
                let failed = !v.passes();
                validations.push(v);
                if failed {
                    std::thread::sleep(Duration::from_secs(5));
                    let again = link::validate(*l, &relay.addr, &registry.addr, &path);
                    println!("{} (second attempt)", again.line());
                    validations.push(again);
                }
            }
        }
        if li == 1 {
            let p = Plan::make(
                &links,
                &workloads,
                &modes,
                reps,
                &samples,
                budget - started.elapsed().as_secs_f64(),
            );
            println!("{}", p.summary);
            plan = Some(p);
        }
        for (wi, wl) in workloads.iter().enumerate() {
            let cache = w.join(format!("cache-{}", wl.name));
            for rep in 0..reps {
                for (mi, mode) in modes.iter().enumerate() {
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
                    let result = run_mode(&ctx, wl, &relay.addr, mode, &rep.to_string(), &cache);
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
    println!("suite ran in {:.0} s", started.elapsed().as_secs_f64());
    write_results(root, &machine, &links, &workloads, &samples, &validations, &needed);
}

/// Which runs the budget allows on the links after the first, and estimates for the full-pull
/// runs it leaves out.
struct Plan {
    /// (link, workload, mode, rep) to run.
    runs: std::collections::BTreeSet<(usize, usize, usize, usize)>,
    /// Predicted figures of (link, workload, mode) left out.
    estimates: BTreeMap<(usize, usize, usize), RunFigures>,
    summary: String,
}

impl Plan {
    fn make(
        links: &[Link],
        workloads: &[Workload],
        modes: &[String],
        reps: usize,
        measured: &[Sample],
        left: f64,
    ) -> Plan {
        let first = links[0];
        // Per (workload, mode): the first link's median, with its own transfer time taken out.
        let base = |wi: usize, mi: usize| -> Option<RunFigures> {
            let v: Vec<&Sample> = measured
                .iter()
                .filter(|s| s.workload == workloads[wi].name && s.mode == modes[mi] && s.link == first.name())
                .collect();
            let st = stat(&v)?;
            if st.median.is_nan() {
                return None;
            }
            let own = first.serialize(st.bytes).as_secs_f64() + st.requests as f64 * first.rtt.as_secs_f64();
            Some(RunFigures {
                seconds: (st.median - own).max(0.0),
                bytes: st.bytes,
                requests: st.requests,
                rss_kb: st.rss_kb,
            })
        };
        let predict = |li: usize, wi: usize, mi: usize| -> Option<RunFigures> {
            let b = base(wi, mi)?;
            let l = links[li];
            Some(RunFigures {
                seconds: b.seconds + l.serialize(b.bytes).as_secs_f64() + b.requests as f64 * l.rtt.as_secs_f64(),
                ..b
            })
        };
        let full = |mi: usize| matches!(modes[mi].as_str(), "pull" | "skopeo+umoci");
        let mut tiers: Vec<Vec<(usize, usize, usize, usize)>> = vec![Vec::new(); 4];
        for li in 1..links.len() {
            for wi in 0..workloads.len() {
                for mi in 0..modes.len() {
                    for rep in 0..reps {
                        let tier = match (full(mi), rep) {
                            (false, 0) => 0,
                            (true, 0) => 1,
                            (false, _) => 2,
                            (true, _) => 3,
                        };
                        tiers[tier].push((li, wi, mi, rep));
                    }
                }
            }
        }
        let cost = |r: &(usize, usize, usize, usize)| predict(r.0, r.1, r.2).map_or(0.0, |f| f.seconds);
        let mut runs = std::collections::BTreeSet::new();
        let mut spent = 0.0;
        for (t, tier) in tiers.iter_mut().enumerate() {
            // Cheap links first within a tier (they are already in link order), cheap runs first.
            tier.sort_by(|a, b| (a.0, a.3).cmp(&(b.0, b.3)).then(cost(a).total_cmp(&cost(b))));
            for r in tier.iter() {
                let c = cost(r) + 1.0;
                if t == 0 || spent + c <= left {
                    spent += c;
                    runs.insert(*r);
                }
            }
        }
        let mut estimates = BTreeMap::new();
        let mut left_out = Vec::new();
        for (li, l) in links.iter().enumerate().skip(1) {
            for (wi, wl) in workloads.iter().enumerate() {
                for mi in (0..modes.len()).filter(|m| full(*m)) {
                    if !runs.contains(&(li, wi, mi, 0)) {
                        if let Some(f) = predict(li, wi, mi) {
                            estimates.insert((li, wi, mi), f);
                            left_out.push(format!("{}/{}/{}", wl.name, l.name(), modes[mi]));
                        }
                    }
                }
            }
        }
        let summary = format!(
            "budget: {:.0} s left for the slower links; planned {} runs, predicted {:.0} s{}",
            left,
            runs.len(),
            spent,
            if left_out.is_empty() {
                String::new()
            } else {
                format!("; estimated, not run: {}", left_out.join(", "))
            }
        );
        Plan {
            runs,
            estimates,
            summary,
        }
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

struct Stat {
    median: f64,
    min: f64,
    max: f64,
    bytes: u64,
    requests: u64,
    rss_kb: u64,
    failed: Option<String>,
    /// Every figure is a budget estimate, none measured.
    estimated: bool,
}

fn stat(samples: &[&Sample]) -> Option<Stat> {
    if samples.is_empty() {
        return None;
    }
    let ok: Vec<RunFigures> = samples.iter().filter_map(|s| s.result.as_ref().ok().copied()).collect();
    let failed = samples.iter().find_map(|s| s.result.as_ref().err().cloned());
    if ok.is_empty() {
        return Some(Stat {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            bytes: 0,
            requests: 0,
            rss_kb: 0,
            failed,
            estimated: false,
        });
    }
    let mut t: Vec<f64> = ok.iter().map(|f| f.seconds).collect();
    t.sort_by(f64::total_cmp);
    let mid = ok.len() / 2;
    Some(Stat {
        median: t[mid],
        min: t[0],
        max: t[t.len() - 1],
        bytes: ok[mid].bytes,
        requests: ok[mid].requests,
        rss_kb: ok.iter().map(|f| f.rss_kb).max().unwrap_or(0),
        failed,
        estimated: samples.iter().all(|s| s.estimated),
    })
}

fn write_results(
    root: &str,
    machine: &str,
    links: &[Link],
    workloads: &[Workload],
    samples: &[Sample],
    validations: &[link::Validation],
    needed: &BTreeMap<&str, (u64, f64)>,
) {
    let dir = common::results_dir(root);
    let mut csv = String::from("workload,link,mode,rep,status,seconds,blob_bytes,requests,peak_rss_kb,error\n");
    for s in samples {
        match &s.result {
            Ok(f) => writeln!(
                csv,
                "{},{},{},{},{},{:.4},{},{},{},",
                s.workload,
                s.link,
                s.mode,
                s.rep,
                if s.estimated { "estimated" } else { "ok" },
                f.seconds,
                f.bytes,
                f.requests,
                f.rss_kb
            ),
            Err(e) => writeln!(
                csv,
                "{},{},{},{},failed,,,,,\"{}\"",
                s.workload,
                s.link,
                s.mode,
                s.rep,
                e.replace('"', "'")
            ),
        }
        .unwrap();
    }
    std::fs::write(dir.join("suite.csv"), csv).unwrap();

    let mut md = format!(
        "# lamina benchmark suite\n\nmachine: {machine}  \ncommand: `cargo bench --bench suite -- {}`  \n\n## Link emulation check\n\n",
        std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" ")
    );
    for v in validations {
        writeln!(md, "- {}", v.line()).unwrap();
    }
    md.push_str("\n## Time to ready (median [min–max] s), blob bytes, requests, peak RSS of lamina\n");
    for wl in workloads {
        let (opened, ratio) = needed.get(wl.name).copied().unwrap_or((0, 1.0));
        writeln!(
            md,
            "\n### {} — `{}`\n\nfiles opened: {:.1} MB (≈ {:.1} MB compressed)\n\n| link | mode | seconds | MB fetched | requests | peak RSS MB | lazy/full (pull) | lazy/floor |\n|---|---|---|---|---|---|---|---|",
            wl.name,
            wl.cmd.join(" "),
            opened as f64 / 1e6,
            opened as f64 * ratio / 1e6
        )
        .unwrap();
        for l in links {
            let by_mode = |m: &str| {
                let v: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.workload == wl.name && s.link == l.name() && s.mode == m)
                    .collect();
                stat(&v)
            };
            let full = by_mode("pull");
            let floor = opened as f64 * ratio * 8.0 / l.rate_bps.map_or(f64::INFINITY, |r| r as f64)
                + 4.0 * l.rtt.as_secs_f64();
            for m in MODES {
                let Some(s) = by_mode(m) else { continue };
                if let Some(e) = &s.failed {
                    if s.median.is_nan() {
                        writeln!(md, "| {} | {m} | FAILED: {} | | | | | |", l.name(), e.replace('|', "/")).unwrap();
                        continue;
                    }
                }
                let lazy = m.starts_with("lazy");
                let vs_full = match (&full, lazy) {
                    (Some(f), true) if !f.median.is_nan() => {
                        format!(
                            "{:.2}{}",
                            s.median / f.median,
                            if f.estimated { " (est. pull)" } else { "" }
                        )
                    }
                    _ => String::new(),
                };
                if s.estimated {
                    writeln!(
                        md,
                        "| {} | {m} | ~{:.1} (est., not run: budget) | {:.1} | {} | | | |",
                        l.name(),
                        s.median,
                        s.bytes as f64 / 1e6,
                        s.requests
                    )
                    .unwrap();
                    continue;
                }
                let vs_floor = if m == "lazy-cold" && l.rate_bps.is_none() {
                    // No rate: the floor is a few RTTs, and the ratio would only say how
                    // fast this machine's CPU is.
                    "— (unlimited link)".to_string()
                } else if m == "lazy-cold" {
                    format!("{:.2} (floor {:.2} s)", s.median / floor, floor)
                } else {
                    String::new()
                };
                writeln!(
                    md,
                    "| {} | {m}{} | {:.2} [{:.2}–{:.2}] | {:.1} | {} | {} | {vs_full} | {vs_floor} |",
                    l.name(),
                    if s.failed.is_some() { " (some runs FAILED)" } else { "" },
                    s.median,
                    s.min,
                    s.max,
                    s.bytes as f64 / 1e6,
                    s.requests,
                    if s.rss_kb > 0 {
                        format!("{:.0}", s.rss_kb as f64 / 1024.0)
                    } else {
                        "-".into()
                    },
                )
                .unwrap();
            }
        }
    }
    std::fs::write(dir.join("suite.md"), &md).unwrap();
    println!("\n{md}");
    plots(&dir, links, workloads, samples);
    println!("results in {}", dir.display());
}

const COLORS: [&str; 5] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"];

/// Line charts as SVG (and PNG through rsvg-convert when it is there): start-up time against
/// RTT per mode, one panel per workload; bytes fetched per mode.
fn plots(dir: &Path, links: &[Link], workloads: &[Workload], samples: &[Sample]) {
    let (pw, ph, m) = (360.0, 260.0, 50.0);
    let width = pw * workloads.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{}' font-family='sans-serif' font-size='11'><rect width='100%' height='100%' fill='white'/>",
        ph + 40.0
    );
    for (wi, wl) in workloads.iter().enumerate() {
        let x0 = wi as f64 * pw;
        let pts = |mode: &str| -> Vec<(f64, f64, bool)> {
            links
                .iter()
                .filter_map(|l| {
                    let v: Vec<&Sample> = samples
                        .iter()
                        .filter(|s| s.workload == wl.name && s.link == l.name() && s.mode == mode)
                        .collect();
                    let s = stat(&v)?;
                    (!s.median.is_nan()).then_some((l.rtt.as_secs_f64() * 1e3, s.median, s.estimated))
                })
                .collect()
        };
        let all: Vec<(f64, f64, bool)> = MODES.iter().flat_map(|m| pts(m)).collect();
        let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let ymax = all.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
        let sx = |x: f64| x0 + m + x / xmax * (pw - 2.0 * m);
        let sy = |y: f64| ph - m + 20.0 - y / ymax * (ph - 2.0 * m);
        write!(
            svg,
            "<text x='{}' y='16' font-size='13'>{} — time to ready (s) vs RTT (ms)</text><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
            x0 + m, wl.name, sx(0.0), sy(0.0), sx(xmax), sy(0.0), sx(0.0), sy(0.0), sx(0.0), sy(ymax)
        )
        .unwrap();
        for k in 0..=4 {
            let y = ymax * k as f64 / 4.0;
            write!(
                svg,
                "<text x='{}' y='{}' text-anchor='end'>{y:.1}</text>",
                sx(0.0) - 4.0,
                sy(y) + 4.0
            )
            .unwrap();
        }
        for l in links {
            let x = l.rtt.as_secs_f64() * 1e3;
            write!(
                svg,
                "<text x='{}' y='{}' text-anchor='middle'>{x:.0}</text>",
                sx(x),
                sy(0.0) + 14.0
            )
            .unwrap();
        }
        for (mi, mode) in MODES.iter().enumerate() {
            let p = pts(mode);
            if p.is_empty() {
                continue;
            }
            let path: Vec<String> = p
                .iter()
                .map(|(x, y, _)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            write!(
                svg,
                "<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>",
                COLORS[mi],
                path.join(" ")
            )
            .unwrap();
            for (x, y, est) in &p {
                // A budget estimate is drawn hollow.
                write!(
                    svg,
                    "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{}' stroke='{}'/>",
                    sx(*x),
                    sy(*y),
                    if *est { "white" } else { COLORS[mi] },
                    COLORS[mi]
                )
                .unwrap();
            }
            if wi == 0 && mi == 0 {
                write!(
                    svg,
                    "<text x='{}' y='{}' fill='black'>hollow = estimate (budget)</text>",
                    x0 + m + 8.0,
                    40.0 + 13.0 * MODES.len() as f64
                )
                .unwrap();
            }
            if wi == 0 {
                write!(
                    svg,
                    "<text x='{}' y='{}' fill='{}'>{mode}</text>",
                    x0 + m + 8.0,
                    40.0 + 13.0 * mi as f64,
                    COLORS[mi]
                )
                .unwrap();
            }
        }
    }
    svg.push_str("</svg>");
    save_svg(dir, "suite-startup", &svg);

    // Bytes fetched per mode (first link; the bytes do not depend on the link).
    let bar_w = 14.0;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{}' font-family='sans-serif' font-size='11'><rect width='100%' height='100%' fill='white'/>",
        ph + 40.0
    );
    for (wi, wl) in workloads.iter().enumerate() {
        let x0 = wi as f64 * pw;
        let vals: Vec<(usize, f64)> = MODES
            .iter()
            .enumerate()
            .filter_map(|(mi, mode)| {
                let v: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| {
                        s.workload == wl.name && s.mode == *mode && links.first().is_some_and(|l| s.link == l.name())
                    })
                    .collect();
                let s = stat(&v)?;
                Some((mi, s.bytes as f64 / 1e6))
            })
            .collect();
        let ymax = vals.iter().map(|v| v.1).fold(1.0, f64::max) * 1.15;
        write!(
            svg,
            "<text x='{}' y='16' font-size='13'>{} — MB fetched per mode</text>",
            x0 + m,
            wl.name
        )
        .unwrap();
        for (k, (mi, mb)) in vals.iter().enumerate() {
            let h = mb / ymax * (ph - 2.0 * m);
            let x = x0 + m + k as f64 * (bar_w * 4.0);
            let y = ph - m + 20.0 - h;
            write!(
                svg,
                "<rect x='{x}' y='{y}' width='{}' height='{h}' fill='{}'/><text x='{}' y='{}' text-anchor='middle'>{mb:.1}</text><text x='{}' y='{}' text-anchor='middle' font-size='9'>{}</text>",
                bar_w * 2.0,
                COLORS[*mi],
                x + bar_w,
                y - 3.0,
                x + bar_w,
                ph - m + 34.0,
                MODES[*mi]
            )
            .unwrap();
        }
    }
    svg.push_str("</svg>");
    save_svg(dir, "suite-bytes", &svg);
}

fn save_svg(dir: &Path, name: &str, svg: &str) {
    let path = dir.join(format!("{name}.svg"));
    std::fs::write(&path, svg).unwrap();
    match Command::new("rsvg-convert")
        .arg("-o")
        .arg(dir.join(format!("{name}.png")))
        .arg(&path)
        .status()
    {
        Ok(s) if s.success() => {}
        _ => println!("{name}.png not written: rsvg-convert (Debian librsvg2-bin) is missing or failed"),
    }
}
