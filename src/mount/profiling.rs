//! A mount's access profile: the one it starts from (the cache's, else the registry's, asked
//! once the mount is up), the
//! prefetch it drives, and the recording of this run merged into the cache now and then and
//! at the end (so a daemon killed half way still leaves what it saw).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::fetch::prefetch::Class;
use crate::fetch::{Fetcher, LayerSource};
use crate::index::LayerIndex;
use crate::profile::{self, Profile};
use crate::registry::Registry;
use crate::view::ImageView;

/// How long a mount waits for the registry to say whether the image has a profile.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// The image's profile in the registry, if it has one. Asked after the mount is up (never on
/// the start-up path); problems are warnings: a mount never fails for its profile.
pub async fn find_in_registry(registry: &Registry, repo: &str, image: &Digest) -> Option<Profile> {
    match tokio::time::timeout(FIND_TIMEOUT, profile::share::find(registry, repo, image)).await {
        Ok(Ok(found)) => {
            if let Some(p) = &found {
                tracing::info!(
                    files = p.files.len(),
                    runs = p.runs,
                    "using the image's access profile from the registry"
                );
            }
            found
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not look for an access profile in the registry; going on without");
            None
        }
        Err(_) => {
            tracing::warn!("the registry did not answer about access profiles in time; going on without");
            None
        }
    }
}

/// Prefetch what `profile` lists, in first-access order, behind demand reads.
pub fn prefetch(
    profile: &Profile,
    view: &ImageView,
    fetcher: &Arc<Fetcher>,
    sources: &[LayerSource],
    digests: &[String],
) {
    let batches = view.live().read(|st| {
        let indexes: Vec<&LayerIndex> = st.layers.iter().collect();
        profile::apply::batches(profile, digests, &indexes)
    });
    let chunks: usize = batches.iter().map(|b| b.chunks.len()).sum();
    tracing::info!(batches = batches.len(), chunks, "prefetching the access profile");
    fetcher
        .prefetch
        .watch_profile(batches.iter().flat_map(|b| b.chunks.iter().map(|c| c.digest)));
    for b in batches {
        fetcher.prefetch(&sources[b.layer], b.chunks, Class::Profile);
    }
}

/// Writes this run, merged with the profile the mount started from, into the cache.
pub struct Recording {
    /// The profile the mount started from (set late when it came from the registry).
    base: parking_lot::Mutex<Option<Profile>>,
    cache_dir: PathBuf,
    image: Digest,
    digests: Vec<String>,
    view: Arc<ImageView>,
}

impl Recording {
    /// Recording of `view` for image `image`.
    pub fn new(
        base: Option<Profile>,
        cache_dir: PathBuf,
        image: Digest,
        digests: Vec<String>,
        view: Arc<ImageView>,
    ) -> Recording {
        Recording {
            base: parking_lot::Mutex::new(base),
            cache_dir,
            image,
            digests,
            view,
        }
    }

    /// The profile the mount starts from, found after the mount was up.
    pub fn set_base(&self, base: Profile) {
        *self.base.lock() = Some(base);
    }

    /// Write the merged profile if anything was recorded since the last time.
    pub fn flush(&self) {
        if !self.view.recorder.take_changed() {
            return;
        }
        let run = self.view.recorder.profile(&self.image, self.view.live(), &self.digests);
        let mut merged = self.base.lock().clone().unwrap_or_else(|| Profile::new(&self.image));
        merged.merge(&run);
        if let Err(e) = profile::save(&self.cache_dir, &merged) {
            tracing::warn!(error = %e, "could not save the access profile");
        }
    }
}
