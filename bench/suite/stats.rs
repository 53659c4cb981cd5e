//! What one run gives ([`RunFigures`]), a run as recorded ([`Sample`]), and the summary of the
//! runs of one workload, link and mode ([`Stat`]: median and range of the time, the median
//! run's bytes and requests, the highest RSS).

/// Time to ready, blob bytes and requests seen by the registry, peak RSS of lamina.
#[derive(Clone, Copy, Default)]
pub struct RunFigures {
    pub seconds: f64,
    pub bytes: u64,
    pub requests: u64,
    pub rss_kb: u64,
}

/// One run of a workload's mode on a link, or its error.
#[derive(Clone)]
pub struct Sample {
    pub workload: String,
    pub link: String,
    pub mode: String,
    pub rep: usize,
    pub result: Result<RunFigures, String>,
    /// A prediction written where the budget left a full-pull run out, not a measurement.
    pub estimated: bool,
}

/// The runs of one workload, link and mode, summed up.
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub bytes: u64,
    pub requests: u64,
    pub rss_kb: u64,
    pub failed: Option<String>,
    /// Every figure is a budget estimate, none measured.
    pub estimated: bool,
}

/// The summary of the samples of `workload` on `link` in `mode`; None if there are none. With
/// every run failed, the times are NaN and `failed` holds an error.
pub fn stat_of(samples: &[Sample], workload: &str, link: &str, mode: &str) -> Option<Stat> {
    let v: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.workload == workload && s.link == link && s.mode == mode)
        .collect();
    stat(&v)
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
