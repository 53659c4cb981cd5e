//! Waiting for a state instead of sleeping a fixed time: poll until it holds, with a generous
//! deadline that only turns a hang into a failure (never a timing threshold on lamina).

use std::time::{Duration, Instant};

/// How long a state may take to appear before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two looks.
const INTERVAL: Duration = Duration::from_millis(20);

/// Poll `look` until it gives `Some`; panic naming `what` after [`DEADLINE`].
pub fn until<T>(what: &str, look: impl FnMut() -> Option<T>) -> T {
    within(DEADLINE, look).unwrap_or_else(|| panic!("waited {DEADLINE:?} for {what}"))
}

/// Poll `look` until it gives `Some`, for at most `deadline`; `None` if it never did.
pub fn within<T>(deadline: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = look() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(INTERVAL);
    }
}
