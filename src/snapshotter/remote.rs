//! Remote snapshots: which layer lamina serves lazily, and the lamina mounts that serve them.
//!
//! A remote snapshot of chain depth `n` is the union of the image's first `n` layers, served
//! by one `lamina mount --layers n IMAGE@DIGEST` daemon on the snapshot's `fs` directory. So
//! a container's overlay needs only the topmost remote snapshot of its chain as a lower
//! directory (plus the plain directories of layers containerd applied above it), and the
//! union of the lower layers is lamina's own, the same tree `lamina mount` shows.
//!
//! A layer is served lazily when its Prepare carries the CRI labels, its parent is remote
//! (or it is the first layer), every layer up to it has a table of contents (zstd:chunked or
//! eStargz), and the chain ID containerd names is the one the image's `diff_ids` give.
//! Anything else, or a registry that does not answer within the prepare deadline, takes the
//! ordinary path: containerd downloads the layer and applies it into a directory.
//!
//! The mount daemons run in sessions of their own: they outlive a restart of the
//! snapshotter (containers keep their root), and a daemon that is gone (a reboot) is started
//! again the first time a snapshot above it is mounted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::mount::{MountOptions, Prepared};
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::registry::{ClientOptions, PullPolicy};

use super::meta::Remote;

/// The layer's chain ID, set by containerd's unpacker.
pub const LABEL_REF: &str = "containerd.io/snapshot.ref";
/// The image reference, set by the CRI plugin.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The image manifest's digest, set by the CRI plugin.
pub const LABEL_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The layer blob's digest, set by the CRI plugin.
pub const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// Marks a snapshot lamina serves lazily.
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";

/// How lamina reaches registries and serves layers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The shared chunk cache.
    pub cache_dir: PathBuf,
    /// Registry settings.
    pub client: ClientOptions,
    /// Platform from an index.
    pub platform: Platform,
    /// How long a read waits for a chunk.
    pub fetch_timeout: Duration,
    /// How long a Prepare may spend deciding that a layer is remote.
    pub prepare_timeout: Duration,
    /// How long starting a layer's mount may take.
    pub mount_timeout: Duration,
    /// Serve layers lazily at all; without, every layer takes the ordinary path.
    pub lazy: bool,
}

/// What the CRI labels of a Prepare name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The chain ID the snapshot must have.
    pub chain: Digest,
    /// The image (by digest when the manifest digest label is there).
    pub image: ImageRef,
    /// The layer blob.
    pub layer: Option<Digest>,
}

/// The CRI labels of a Prepare: `Ok(None)` when they are absent (not a CRI pull), `Err` when
/// present but malformed.
pub fn candidate(labels: &BTreeMap<String, String>) -> Result<Option<Candidate>, String> {
    let (Some(chain), Some(image)) = (labels.get(LABEL_REF), labels.get(LABEL_IMAGE_REF)) else {
        return Ok(None);
    };
    let chain: Digest = chain.parse().map_err(|e| format!("{LABEL_REF}={chain:?}: {e}"))?;
    let mut image = ImageRef::parse(image).map_err(|e| format!("{LABEL_IMAGE_REF}={image:?}: {e}"))?;
    if let Some(m) = labels.get(LABEL_MANIFEST_DIGEST) {
        image.digest = Some(m.parse().map_err(|e| format!("{LABEL_MANIFEST_DIGEST}={m:?}: {e}"))?);
    }
    let layer = match labels.get(LABEL_LAYER_DIGEST) {
        Some(l) => Some(l.parse().map_err(|e| format!("{LABEL_LAYER_DIGEST}={l:?}: {e}"))?),
        None => None,
    };
    Ok(Some(Candidate { chain, image, layer }))
}

/// The chain IDs of layers with these `diff_ids`, bottom first (the OCI image spec's rule).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Decide whether the layer `c` names, at chain depth `depth`, can be served lazily, and
/// index every layer up to it into the cache (so its mount starts without the network).
pub async fn decide(c: &Candidate, depth: usize, s: &Settings) -> Result<Remote, String> {
    let options = MountOptions {
        platform: s.platform.clone(),
        client: s.client.clone(),
        cache_dir: s.cache_dir.clone(),
        fetch_timeout: s.fetch_timeout,
        cache_max_bytes: None,
        upper: None,
        passthrough: true,
        readahead: true,
        profile: true,
        pull: PullPolicy::Missing,
        layers: Some(depth),
    };
    let prepared: Prepared = tokio::time::timeout(s.prepare_timeout, crate::mount::prepare(&c.image, &options))
        .await
        .map_err(|_| format!("the registry did not answer within {:?}", s.prepare_timeout))?
        .map_err(|e| e.to_string())?;
    if let Some(plain) = prepared.streams.first() {
        return Err(format!(
            "layer {} has no table of contents ({}) and no gzip index: only zstd:chunked, eStargz and indexed gzip layers (`lamina index`) are served lazily",
            plain.layer.digest, plain.layer.media_type
        ));
    }
    let top = prepared.sources.last().map(|s| &s.digest);
    if let Some(want) = &c.layer {
        if top != Some(want) {
            return Err(format!(
                "layer {} of the image is {}, not {want}",
                depth,
                top.map_or("missing".to_string(), |d| d.to_string())
            ));
        }
    }
    let chain = chain_ids(&prepared.diff_ids).pop();
    if chain.as_ref() != Some(&c.chain) {
        return Err(format!(
            "the image's first {depth} layers have chain ID {}, not {}",
            chain.map_or("none".to_string(), |d| d.to_string()),
            c.chain
        ));
    }
    Ok(Remote {
        image: format!(
            "{}/{}@{}",
            c.image.registry, c.image.repository, prepared.manifest_digest
        ),
        layers: depth,
    })
}

/// The lamina mounts serving remote snapshots.
pub struct Unions {
    settings: Settings,
    /// One lock per snapshot id, so a mount is started once.
    locks: parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Daemons this process started (reaped when they end).
    children: Arc<parking_lot::Mutex<HashMap<u64, std::process::Child>>>,
}

impl Unions {
    /// No mounts yet.
    pub fn new(settings: Settings) -> Unions {
        Unions {
            settings,
            locks: Default::default(),
            children: Default::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Make sure snapshot `id`'s union is served at `fs`: a live mount is kept, a dead one
    /// (its daemon gone) is detached and started again.
    pub async fn ensure(&self, id: u64, fs: &Path, remote: &Remote) -> Result<(), String> {
        let lock = self.locks.lock().entry(id).or_default().clone();
        let held = lock.lock_owned().await;
        // A stat of a FUSE root can block on its daemon: off the async workers.
        let at = fs.to_path_buf();
        match tokio::task::spawn_blocking(move || mount_state(&at))
            .await
            .map_err(|e| e.to_string())?
        {
            MountState::Live => return Ok(()),
            MountState::Dead => {
                tracing::warn!(path = %fs.display(), "the lamina mount of a remote snapshot is gone; starting it again");
                let _ = crate::mount::unmount(fs);
            }
            MountState::Absent => {}
        }
        if let Some(mut old) = self.children.lock().remove(&id) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let mut args: Vec<std::ffi::OsString> = vec![
            "mount".into(),
            remote.image.clone().into(),
            fs.into(),
            "--foreground".into(),
            "--layers".into(),
            remote.layers.to_string().into(),
            "--cache-dir".into(),
            self.settings.cache_dir.clone().into(),
            "--fetch-timeout".into(),
            self.settings.fetch_timeout.as_secs().max(1).to_string().into(),
        ];
        for host in &self.settings.client.insecure_registries {
            args.extend(["--insecure-registry".into(), host.into()]);
        }
        // The start goes on to its end in a task of its own, holding the snapshot's lock: a
        // caller that stops waiting (the deadline) cannot start a second daemon meanwhile, and
        // a daemon that becomes ready late is still recorded (and reaped).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (cache_dir, children) = (self.settings.cache_dir.clone(), self.children.clone());
        let (image, layers, path) = (remote.image.clone(), remote.layers, fs.to_path_buf());
        tokio::spawn(async move {
            let _held = held;
            let started =
                tokio::task::spawn_blocking(move || crate::mount::daemon::start(args, &cache_dir, "snapshot")).await;
            let result = match started {
                Ok(Ok(d)) => {
                    tracing::info!(image = %image, layers, path = %path.display(), pid = d.child.id(), "serving a remote snapshot");
                    children.lock().insert(id, d.child);
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("mounting {image} ({layers} layers): {e}")),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(result);
        });
        tokio::time::timeout(self.settings.mount_timeout, rx)
            .await
            .map_err(|_| {
                format!(
                    "the lamina mount of {} did not start within {:?}",
                    remote.image, self.settings.mount_timeout
                )
            })?
            .map_err(|e| e.to_string())?
    }

    /// Stop serving snapshot `id` (its mount is detached; the daemon ends with it).
    pub fn release(&self, id: u64, fs: &Path) {
        if mount_state(fs) != MountState::Absent {
            if let Err(e) = crate::mount::unmount(fs) {
                tracing::warn!(path = %fs.display(), error = %e, "could not unmount a remote snapshot");
            }
        }
        if let Some(mut child) = self.children.lock().remove(&id) {
            // The daemon ends when its session does; wait for it off the request path.
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            });
        }
        self.locks.lock().remove(&id);
    }
}

/// Whether a lamina mount is at a path.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum MountState {
    /// Nothing is mounted there.
    Absent,
    /// A mount whose daemon answers.
    Live,
    /// A mount whose daemon is gone (`ENOTCONN`).
    Dead,
}

/// What is mounted at `path`, from `/proc/self/mountinfo`.
pub fn mount_state(path: &Path) -> MountState {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return MountState::Absent;
    };
    if !is_mount_point(&info, path) {
        return MountState::Absent;
    }
    match std::fs::metadata(path) {
        Ok(_) => MountState::Live,
        Err(_) => MountState::Dead,
    }
}

/// Whether `mountinfo` lists `path` as a mount point.
pub fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    let want = path.as_os_str().as_encoded_bytes();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| unescape_octal(p) == want)
}

/// mountinfo's escapes (`\040` for a space, and so on) undone.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn cri_labels_name_a_candidate() {
        let d = Digest::of(b"x");
        let mut labels = BTreeMap::from([(LABEL_REF.to_string(), d.to_string())]);
        assert_eq!(candidate(&labels), Ok(None), "no image reference: not a CRI pull");
        labels.insert(LABEL_IMAGE_REF.into(), "127.0.0.1:5000/py:zc".into());
        labels.insert(LABEL_MANIFEST_DIGEST.into(), d.to_string());
        let c = candidate(&labels).unwrap().unwrap();
        assert_eq!((c.chain, c.image.digest, c.layer), (d.clone(), Some(d.clone()), None));
        labels.insert(LABEL_LAYER_DIGEST.into(), "sha256:short".into());
        assert!(candidate(&labels).is_err());
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let info = "36 35 0:30 / /var/lib/x\\040y/fs rw - fuse.lamina lamina ro\n";
        assert!(is_mount_point(info, Path::new("/var/lib/x y/fs")));
        assert!(!is_mount_point(info, Path::new("/var/lib/x")));
        assert_eq!(unescape_octal("a\\"), b"a\\");
        assert_eq!(unescape_octal("\\777"), [255]);
    }
}
