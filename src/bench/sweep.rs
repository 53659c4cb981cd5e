//! The sweep: link by link (fastest first), start the relay, check the emulation, prepare each
//! workload (its extracted tree and what its command opens) and run every repetition and
//! mode; once the first link is done, the [`Plan`] says which runs the slower links get and
//! which full-mode runs are written as estimates instead. A progress bar counts the runs.

use std::time::{Duration, Instant};

use super::floor::{self, Needs};
use super::link::{self, Link, Relay, Validation};
use super::measure::{run_mode, Ctx};
use super::plan::Plan;
use super::stats::Sample;
use super::{Settings, Workload};

/// Wait before checking a link again whose check other work on the machine disturbed.
const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// What a sweep measured.
#[derive(Default)]
pub struct Results {
    /// Every run (or estimate) in the order made.
    pub samples: Vec<Sample>,
    /// The link checks.
    pub validations: Vec<Validation>,
    /// Links whose check could not be made, and why.
    pub unchecked: Vec<(String, String)>,
    /// Per workload (by name): what its command needs, or why that is unknown.
    pub needs: Vec<(String, Result<Needs, String>)>,
    /// The sweep was interrupted: the results are partial.
    pub interrupted: bool,
    /// The budget's plan, when one was made.
    pub plan: Option<String>,
}

impl Results {
    /// What `workload`'s command needs, if known.
    pub fn needs_of(&self, workload: &str) -> Option<Needs> {
        self.needs
            .iter()
            .find(|(w, _)| w == workload)
            .and_then(|(_, n)| n.as_ref().ok().copied())
    }
}

/// Run the sweep. `log` receives one line per run and per check (the suite prints them; the
/// command line keeps the terminal for the progress bar).
pub fn measure(settings: &Settings, workloads: &[Workload], log: &mut dyn FnMut(&str)) -> Results {
    let started = Instant::now();
    let links = &settings.links;
    let mut r = Results::default();
    let mut plan: Option<Plan> = None;
    let total = (links.len() * workloads.len() * settings.reps * settings.modes.len()) as u64;
    let progress = crate::progress::Progress::new(settings.progress);
    let bar = progress.count("bench".into(), total);
    'links: for (li, l) in links.iter().enumerate() {
        let relays: Vec<Result<Relay, String>> = workloads
            .iter()
            .map(|wl| link::start(*l, &wl.registry).map_err(|e| format!("starting the relay: {e}")))
            .collect();
        // The emulation is checked once per link, through the first workload's relay.
        if let Some((wl, Ok(relay))) = workloads.iter().zip(&relays).next() {
            check_link(*l, relay, wl, &mut r, log);
        }
        if li == 1 && settings.budget_secs.is_finite() {
            let left = settings.budget_secs - started.elapsed().as_secs_f64();
            let p = Plan::make(links, workloads, &settings.modes, settings.reps, &r.samples, left);
            log(&p.summary);
            r.plan = Some(p.summary.clone());
            plan = Some(p);
        }
        for (wi, (wl, relay)) in workloads.iter().zip(&relays).enumerate() {
            if settings.interrupt.is_set() {
                break 'links;
            }
            let relay = match relay {
                Ok(relay) => relay,
                Err(e) => {
                    for rep in 0..settings.reps {
                        for m in &settings.modes {
                            r.samples.push(sample(wl, l, *m, rep, Err(e.clone()), false));
                            bar.inc(1);
                        }
                    }
                    continue;
                }
            };
            let ctx = Ctx { settings, relay, wl };
            if li == 0 {
                bar.set_message(format!("{}: extracting the image once, tracing the command", wl.name));
                let needs = floor::prepare(&ctx);
                if let Err(e) = &needs {
                    log(&format!("{}: {e}", wl.name));
                }
                r.needs.push((wl.name.clone(), needs));
            }
            for rep in 0..settings.reps {
                for (mi, mode) in settings.modes.iter().enumerate() {
                    if settings.interrupt.is_set() {
                        break 'links;
                    }
                    bar.set_message(format!("{} {} {} rep {}", wl.name, l.name(), mode.name(), rep + 1));
                    if let Some(p) = &plan {
                        if !p.runs.contains(&(li, wi, mi, rep)) {
                            if let (0, Some(f)) = (rep, p.estimates.get(&(li, wi, mi))) {
                                log(&format!(
                                    "{:<8} {:<16} {:<13} rep {rep}: {:>7.2} s  estimated (budget)",
                                    wl.name,
                                    l.name(),
                                    mode.name(),
                                    f.seconds
                                ));
                                r.samples.push(sample(wl, l, *mode, rep, Ok(*f), true));
                            }
                            bar.inc(1);
                            continue;
                        }
                    }
                    let result = run_mode(&ctx, *mode, &rep.to_string());
                    if settings.interrupt.is_set() {
                        // A run cut short by Ctrl-C is not a measurement.
                        break 'links;
                    }
                    log(&match &result {
                        Ok(f) => format!(
                            "{:<8} {:<16} {:<13} rep {rep}: {:>7.2} s {:>9.1} MB {:>5} requests",
                            wl.name,
                            l.name(),
                            mode.name(),
                            f.seconds,
                            f.bytes as f64 / 1e6,
                            f.requests
                        ),
                        Err(e) => format!(
                            "{:<8} {:<16} {:<13} rep {rep}: FAILED {e}",
                            wl.name,
                            l.name(),
                            mode.name()
                        ),
                    });
                    r.samples.push(sample(wl, l, *mode, rep, result, false));
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    r.interrupted = settings.interrupt.is_set();
    r
}

fn sample(
    wl: &Workload,
    l: &Link,
    mode: super::Mode,
    rep: usize,
    result: Result<super::stats::RunFigures, String>,
    estimated: bool,
) -> Sample {
    Sample {
        workload: wl.name.clone(),
        link: l.name(),
        mode,
        rep,
        result,
        estimated,
    }
}

/// Check the link's emulation with the workload's check blob. A check disturbed by other work
/// on the machine is measured once more; both attempts are kept in the report. `none` is not
/// emulated: nothing to check.
fn check_link(l: Link, relay: &Relay, wl: &Workload, r: &mut Results, log: &mut dyn FnMut(&str)) {
    if l.real {
        return;
    }
    let Some(path) = &wl.check_blob else {
        r.unchecked.push((l.name(), "no blob to check the link with".into()));
        return;
    };
    for attempt in 0..2 {
        match link::validate(l, relay, &wl.registry, path) {
            Ok(v) => {
                let passed = v.passes();
                log(&format!(
                    "{}{}",
                    v.line(),
                    if attempt > 0 { " (second attempt)" } else { "" }
                ));
                r.validations.push(v);
                if passed {
                    return;
                }
                std::thread::sleep(RECHECK_AFTER);
            }
            Err(e) => {
                log(&format!("link {}: not checked: {e}", l.name()));
                r.unchecked.push((l.name(), e.to_string()));
                return;
            }
        }
    }
}
