//! The time-budget planner. The fastest link runs every mode and repetition; from what it
//! measured, each run on a slower link is predicted as seconds + bytes ÷ rate + requests × RTT,
//! and runs are chosen in tiers while the predictions fit the budget: one run of each lazy mode
//! and `local` (always), one run of each full mode (fastest links first), further repetitions of
//! the lazy modes, then of the full ones. A full mode left out gets an estimate instead.

use std::collections::{BTreeMap, BTreeSet};

use super::link::Link;
use super::stats::{stat_of, RunFigures, Sample};
use super::{Mode, Workload};

/// A run: indices of (link, workload, mode) and the repetition.
pub type Run = (usize, usize, usize, usize);

/// Which runs the budget allows on the links after the first, and estimates for the full-pull
/// runs it leaves out.
pub struct Plan {
    /// Runs to make.
    pub runs: BTreeSet<Run>,
    /// Predicted figures of (link, workload, mode) left out.
    pub estimates: BTreeMap<(usize, usize, usize), RunFigures>,
    /// One line for the log: the budget, the runs planned, the estimates.
    pub summary: String,
}

impl Plan {
    /// Plan the links after the first with `left` seconds, from the first link's samples in
    /// `measured`.
    pub fn make(
        links: &[Link],
        workloads: &[Workload],
        modes: &[Mode],
        reps: usize,
        measured: &[Sample],
        left: f64,
    ) -> Plan {
        let first = links[0];
        // Per (workload, mode): the first link's median, with its own transfer time taken out.
        let base = |wi: usize, mi: usize| -> Option<RunFigures> {
            let st = stat_of(measured, &workloads[wi].name, &first.name(), modes[mi])?;
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
        let full = |mi: usize| modes[mi].is_full();
        let mut tiers: Vec<Vec<Run>> = vec![Vec::new(); 4];
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
        let cost = |r: &Run| predict(r.0, r.1, r.2).map_or(0.0, |f| f.seconds);
        let mut runs = BTreeSet::new();
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
                            left_out.push(format!("{}/{}/{}", wl.name, l.name(), modes[mi].name()));
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
