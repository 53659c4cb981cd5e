//! What one run gives ([`RunFigures`]), a run as recorded ([`Sample`]), and the summary of the
//! runs of one workload, link and mode ([`Stat`]: median and range of the time, the median
//! run's bytes and requests, the highest RSS).

use super::Mode;

/// Time to ready, bytes and requests that crossed the link, peak RSS of lamina.
#[derive(Clone, Copy, Default, Debug)]
pub struct RunFigures {
    /// Time to ready.
    pub seconds: f64,
    /// Bytes the registry sent through the link (headers included).
    pub bytes: u64,
    /// HTTP requests through the link.
    pub requests: u64,
    /// Peak RSS of lamina's processes, KiB (0 = unknown).
    pub rss_kb: u64,
}

/// One run of a workload's mode on a link, or its error.
#[derive(Clone)]
pub struct Sample {
    /// The workload's name.
    pub workload: String,
    /// The link's name.
    pub link: String,
    /// The mode.
    pub mode: Mode,
    /// Which repetition (from 0).
    pub rep: usize,
    /// The figures, or why the run failed.
    pub result: Result<RunFigures, String>,
    /// A prediction written where the budget left a full-pull run out, not a measurement.
    pub estimated: bool,
}

/// The runs of one workload, link and mode, summed up.
pub struct Stat {
    /// Median time to ready (NaN when every run failed).
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
    /// Runs that gave figures.
    pub runs: usize,
    /// Bytes of the median run.
    pub bytes: u64,
    /// Requests of the median run.
    pub requests: u64,
    /// Highest peak RSS.
    pub rss_kb: u64,
    /// An error of a failed run.
    pub failed: Option<String>,
    /// Every figure is a budget estimate, none measured.
    pub estimated: bool,
}

/// The summary of the samples of `workload` on `link` in `mode`; None if there are none. With
/// every run failed, the times are NaN and `failed` holds an error.
pub fn stat_of(samples: &[Sample], workload: &str, link: &str, mode: Mode) -> Option<Stat> {
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
            runs: 0,
            bytes: 0,
            requests: 0,
            rss_kb: 0,
            failed,
            estimated: false,
        });
    }
    let mut by_time = ok.clone();
    by_time.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let n = by_time.len();
    let mid = by_time[n / 2];
    // An even number of runs: the mean of the two middle times (bytes and requests are those
    // of one real run, the upper middle one).
    let median = match n % 2 {
        0 => (by_time[n / 2 - 1].seconds + mid.seconds) / 2.0,
        _ => mid.seconds,
    };
    Some(Stat {
        median,
        min: by_time[0].seconds,
        max: by_time[by_time.len() - 1].seconds,
        runs: ok.len(),
        bytes: mid.bytes,
        requests: mid.requests,
        rss_kb: ok.iter().map(|f| f.rss_kb).max().unwrap_or(0),
        failed,
        estimated: samples.iter().all(|s| s.estimated),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seconds: f64, bytes: u64) -> Sample {
        Sample {
            workload: "w".into(),
            link: "l".into(),
            mode: Mode::LazyCold,
            rep: 0,
            result: Ok(RunFigures {
                seconds,
                bytes,
                requests: 1,
                rss_kb: bytes,
            }),
            estimated: false,
        }
    }

    #[test]
    fn median_run_gives_the_bytes_and_failures_are_kept() {
        let mut v = vec![run(3.0, 30), run(1.0, 10), run(2.0, 20)];
        v.push(Sample {
            result: Err("boom".into()),
            ..run(0.0, 0)
        });
        let s = stat_of(&v, "w", "l", Mode::LazyCold).unwrap();
        assert_eq!((s.median, s.min, s.max, s.bytes, s.runs), (2.0, 1.0, 3.0, 20, 3));
        assert_eq!((s.rss_kb, s.failed.as_deref()), (30, Some("boom")));
        assert!(stat_of(&v, "w", "l", Mode::Full).is_none());
        // Two runs: the mean of the two times, the bytes of the later one.
        let two = [run(1.0, 10), run(2.0, 20)];
        let s = stat_of(&two, "w", "l", Mode::LazyCold).unwrap();
        assert_eq!((s.median, s.bytes), (1.5, 20));
        let all_failed = [Sample {
            result: Err("x".into()),
            ..run(0.0, 0)
        }];
        assert!(stat_of(&all_failed, "w", "l", Mode::LazyCold).unwrap().median.is_nan());
    }
}
