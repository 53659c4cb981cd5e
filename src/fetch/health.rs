//! What a fetcher knows of its registry's health, so reads fail fast and once:
//!
//! - a layer the registry refuses for good (404, 410, 401 after authenticating, 403): every
//!   later read of it fails at once, and `lamina stats` says why;
//! - a registry that cannot be reached (connection refused, no answer, a stalled body, 5xx):
//!   for [`UNREACHABLE_BACKOFF`] (1 s) after such a failure, reads that need the network fail at
//!   once instead of waiting their deadline again (the kernel follows a failed read-ahead
//!   read with a read of its own: one deadline per read, not two). The first read after the
//!   backoff tries again, so the mount recovers by itself when the registry returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::FetchError;
use crate::digest::Digest;
use crate::registry::RegistryError;

/// How long reads fail fast after the registry could not be reached.
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(1);

/// Health of the registry behind a fetcher.
#[derive(Default)]
pub struct Health {
    /// Layers refused for good, with why.
    refused: Mutex<HashMap<Digest, String>>,
    /// Until when the registry counts as unreachable, and why.
    unreachable: Mutex<Option<(Instant, String)>>,
}

impl Health {
    /// Whether a read of `layer` that needs the network should try now.
    pub fn check(&self, layer: &Digest) -> Result<(), FetchError> {
        if let Some(why) = self.refused.lock().get(layer) {
            return Err(FetchError::Failed(format!(
                "layer {layer} is refused by the registry: {why}"
            )));
        }
        let mut u = self.unreachable.lock();
        match &*u {
            Some((until, why)) if Instant::now() < *until => Err(FetchError::Failed(format!(
                "the registry cannot be reached ({why}); trying again in {} ms",
                until.saturating_duration_since(Instant::now()).as_millis()
            ))),
            Some(_) => {
                *u = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A request for `layer` failed with `e`.
    pub fn failed(&self, layer: &Digest, e: &RegistryError) {
        if e.is_refusal() {
            tracing::error!(%layer, error = %e, "the registry refuses this layer: its reads fail from now on");
            self.refused.lock().insert(layer.clone(), e.to_string());
        } else if e.is_transient() {
            self.unreachable(&e.to_string());
        }
    }

    /// The registry gave no answer (or stopped sending) in time.
    pub fn unreachable(&self, why: &str) {
        let mut u = self.unreachable.lock();
        if u.is_none() {
            tracing::warn!(
                reason = why,
                "the registry cannot be reached; reads of uncached chunks fail fast for {UNREACHABLE_BACKOFF:?}"
            );
        }
        *u = Some((Instant::now() + UNREACHABLE_BACKOFF, why.to_string()));
    }

    /// A request succeeded: the registry is back.
    pub fn answered(&self) {
        let mut u = self.unreachable.lock();
        if u.take().is_some() {
            tracing::info!("the registry answers again");
        }
    }

    /// Why `layer` is refused, if it is.
    pub fn refusal(&self, layer: &Digest) -> Option<String> {
        self.refused.lock().get(layer).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> RegistryError {
        RegistryError::Status {
            method: "GET".into(),
            url: "http://r/v2/x/blobs/sha256:00".into(),
            status: code,
            body: String::new(),
        }
    }

    #[test]
    fn refusals_are_for_good_and_outages_for_a_while() {
        let h = Health::default();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert!(h.check(&a).is_ok());
        h.failed(&a, &status(404));
        assert!(h.check(&a).is_err());
        assert!(h.refusal(&a).unwrap().contains("404"));
        assert!(h.check(&b).is_ok(), "a refusal is of one layer");
        h.failed(&b, &status(503));
        assert!(h.check(&b).is_err(), "an outage fails reads fast");
        h.answered();
        assert!(h.check(&b).is_ok(), "and ends when the registry answers");
        h.failed(&b, &status(416));
        assert!(h.check(&b).is_ok(), "other errors change nothing");
    }
}
