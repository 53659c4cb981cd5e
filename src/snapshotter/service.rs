//! containerd's snapshots API over lamina's records ([`Meta`]) and unions ([`Unions`]).
//!
//! Mounts follow containerd's overlay snapshotter, so containerd performs them as they are:
//!
//! ```text
//! active, no parent          bind  fs  (rbind, rw)
//! view, one lower            bind  LOWER (rbind, ro)
//! active over lowers         overlay  upperdir=fs, workdir=work, lowerdir=L1:L2:…
//! view over lowers           overlay  lowerdir=L1:L2:…
//! ```
//!
//! The lower directories are the parents' `fs` directories, immediate parent first, down to
//! the first remote snapshot, whose `fs` is a lamina union of every layer below it: the walk
//! stops there. Error codes follow containerd's own store: NotFound for an unknown key or
//! parent, AlreadyExists for a taken key, FailedPrecondition for Remove of a parent or
//! Commit of what is not active, InvalidArgument for a parent that is not committed.

// The trait's error type is tonic's `Status` (large): helpers return it as the API does.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::Status;
use containerd_snapshots::{Info, Usage};

use super::filter;
use super::meta::{Kind, Meta, Record, Remote};
use super::remote::{self, Unions};

/// A snapshot's mounts, and the remote snapshot (id, what it serves) they stand on.
type MountsAndUnion = (Vec<Mount>, Option<(u64, Remote)>);

/// The snapshots service.
pub struct Service {
    meta: tokio::sync::Mutex<Meta>,
    unions: Arc<Unions>,
}

fn io_status(what: &str) -> impl FnOnce(std::io::Error) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

fn not_found(key: &str) -> Status {
    Status::not_found(format!("snapshot {key:?} does not exist"))
}

impl Service {
    /// Serve the records in `meta` with `unions`.
    pub fn new(meta: Meta, unions: Arc<Unions>) -> Service {
        Service {
            meta: tokio::sync::Mutex::new(meta),
            unions,
        }
    }

    /// Start again, in the background, the unions that snapshots are stacked on (after a
    /// reboot their daemons are gone); the rest start when first mounted.
    pub async fn restore(self: &Arc<Self>) {
        let wanted: Vec<(u64, std::path::PathBuf, Remote)> = {
            let meta = self.meta.lock().await;
            meta.all()
                .filter_map(|r| Some((r, r.remote.as_ref()?)))
                // Only the topmost remote snapshot of a chain is ever a lower directory.
                .filter(|(r, _)| meta.all().any(|c| c.parent == r.name && c.remote.is_none()))
                .map(|(r, remote)| (r.id, meta.fs(r.id), remote.clone()))
                .collect()
        };
        for (id, fs, remote) in wanted {
            let unions = self.unions.clone();
            tokio::spawn(async move {
                if let Err(e) = unions.ensure(id, &fs, &remote).await {
                    tracing::warn!(image = %remote.image, error = %e, "could not serve a remote snapshot again");
                }
            });
        }
    }

    /// The mounts of `record`, and the remote snapshot under it whose union must be live.
    fn mounts_of(meta: &Meta, record: &Record) -> Result<MountsAndUnion, Status> {
        let mut lowers = Vec::new();
        let mut union = None;
        let mut parent = record.parent.clone();
        while !parent.is_empty() {
            let p = meta
                .get(&parent)
                .ok_or_else(|| Status::internal(format!("parent {parent:?} of {:?} is missing", record.name)))?;
            lowers.push(meta.fs(p.id).to_string_lossy().into_owned());
            if let Some(r) = &p.remote {
                union = Some((p.id, r.clone()));
                break;
            }
            parent = p.parent.clone();
        }
        let fs = meta.fs(record.id).to_string_lossy().into_owned();
        let bind = |source: String, rw: bool| Mount {
            r#type: "bind".into(),
            source,
            target: String::new(),
            options: vec!["rbind".into(), if rw { "rw" } else { "ro" }.into()],
        };
        let mount = match (record.kind, lowers.len()) {
            (Kind::Active, 0) => bind(fs, true),
            (_, 0) => bind(fs, false),
            (Kind::View, 1) => bind(lowers.remove(0), false),
            (Kind::View, _) => Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![format!("lowerdir={}", lowers.join(":"))],
            },
            (_, _) => Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    format!("workdir={}", meta.work(record.id).to_string_lossy()),
                    format!("upperdir={fs}"),
                    format!("lowerdir={}", lowers.join(":")),
                ],
            },
        };
        Ok((vec![mount], union))
    }

    /// Make sure the union under a snapshot is served, then hand its mounts out.
    async fn live_mounts(&self, mounts: Vec<Mount>, union: Option<(u64, Remote)>) -> Result<Vec<Mount>, Status> {
        if let Some((id, r)) = union {
            let fs = self.meta.lock().await.fs(id);
            self.unions
                .ensure(id, &fs, &r)
                .await
                .map_err(|e| Status::unavailable(format!("remote snapshot: {e}")))?;
        }
        Ok(mounts)
    }

    /// Whether the layer this Prepare is for can be served lazily: the remote record to
    /// commit, or why not (logged; the ordinary path follows).
    async fn remote_layer(&self, parent: &str, labels: &BTreeMap<String, String>) -> Option<(String, Remote)> {
        if !self.unions.settings().lazy {
            return None;
        }
        let c = match remote::candidate(labels) {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "malformed snapshot labels; applying the layer the ordinary way");
                return None;
            }
        };
        let depth = if parent.is_empty() {
            1
        } else {
            let meta = self.meta.lock().await;
            match meta.get(parent).and_then(|p| p.remote.as_ref()) {
                Some(r) => r.layers + 1,
                None => {
                    tracing::info!(chain = %c.chain, "the parent layer was applied, not served: so is this one");
                    return None;
                }
            }
        };
        match remote::decide(&c, depth, self.unions.settings()).await {
            Ok(r) => Some((c.chain.to_string(), r)),
            Err(e) => {
                tracing::info!(image = %c.image, chain = %c.chain, reason = %e, "layer not served lazily; containerd applies it");
                None
            }
        }
    }

    fn info(r: &Record) -> Info {
        Info {
            kind: match r.kind {
                Kind::View => containerd_snapshots::Kind::View,
                Kind::Active => containerd_snapshots::Kind::Active,
                Kind::Committed => containerd_snapshots::Kind::Committed,
            },
            name: r.name.clone(),
            parent: r.parent.clone(),
            labels: r.labels.clone().into_iter().collect(),
            created_at: r.created,
            updated_at: r.updated,
        }
    }

    /// Check a new key and its parent.
    fn check_new(meta: &Meta, key: &str, parent: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("empty snapshot key"));
        }
        if meta.get(key).is_some() {
            return Err(Status::already_exists(format!("snapshot {key:?} already exists")));
        }
        if !parent.is_empty() {
            match meta.get(parent) {
                None => return Err(Status::not_found(format!("parent snapshot {parent:?} does not exist"))),
                Some(p) if p.kind != Kind::Committed => {
                    return Err(Status::invalid_argument(format!(
                        "parent snapshot {parent:?} is not committed"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn create(
        &self,
        key: String,
        parent: String,
        kind: Kind,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        if kind == Kind::Active {
            {
                let meta = self.meta.lock().await;
                Self::check_new(&meta, &key, &parent)?;
            }
            if let Some((chain, r)) = self.remote_layer(&parent, &labels).await {
                let mut meta = self.meta.lock().await;
                // The parent may have gone while the registry was asked.
                if !parent.is_empty() && meta.get(&parent).is_none() {
                    return Err(Status::not_found(format!("parent snapshot {parent:?} does not exist")));
                }
                // containerd finds the committed snapshot by its label and parent, then
                // answers the unpacker AlreadyExists: nothing is downloaded.
                let exists = meta.all().any(|s| {
                    s.kind == Kind::Committed && s.parent == parent && s.labels.get(remote::LABEL_REF) == Some(&chain)
                });
                if !exists {
                    let mut labels = labels;
                    labels.insert(remote::LABEL_REMOTE.into(), "lamina".into());
                    labels.insert(remote::LABEL_REF.into(), chain.clone());
                    // Named by its chain ID; the same chain over another parent (it cannot
                    // be the same layers then, but a name must not clash) gets a suffix.
                    let name = match meta.get(&chain) {
                        None => chain.clone(),
                        Some(_) => format!("{chain} over {parent}"),
                    };
                    meta.create(&name, &parent, Kind::Committed, labels, Some(r.clone()))
                        .map_err(io_status("recording a remote snapshot"))?;
                    tracing::info!(image = %r.image, layers = r.layers, chain = %chain, "remote snapshot: served lazily, nothing to download");
                }
                return Err(Status::already_exists(format!(
                    "target snapshot {chain:?} already exists"
                )));
            }
        }
        let mut meta = self.meta.lock().await;
        Self::check_new(&meta, &key, &parent)?;
        let record = meta
            .create(&key, &parent, kind, labels, None)
            .map_err(io_status("creating a snapshot"))?;
        let (mounts, union) = Self::mounts_of(&meta, &record)?;
        drop(meta);
        self.live_mounts(mounts, union).await
    }
}

#[containerd_snapshots::tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        let meta = self.meta.lock().await;
        meta.get(&key).map(Self::info).ok_or_else(|| not_found(&key))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let mut meta = self.meta.lock().await;
        let mut record = meta.get(&info.name).cloned().ok_or_else(|| not_found(&info.name))?;
        let paths = fieldpaths.unwrap_or_default();
        if paths.is_empty() {
            record.labels = info.labels.clone().into_iter().collect();
        }
        for path in paths {
            if path == "labels" {
                record.labels = info.labels.clone().into_iter().collect();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label) {
                    Some(v) => record.labels.insert(label.to_string(), v.clone()),
                    None => record.labels.remove(label),
                };
            } else {
                return Err(Status::invalid_argument(format!(
                    "cannot update field {path:?} of a snapshot"
                )));
            }
        }
        let name = record.name.clone();
        let record = meta.replace(&name, record).map_err(io_status("updating a snapshot"))?;
        Ok(Self::info(&record))
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let (fs, remote) = {
            let meta = self.meta.lock().await;
            let r = meta.get(&key).ok_or_else(|| not_found(&key))?;
            (meta.fs(r.id), r.remote.is_some())
        };
        if remote {
            // Its bytes are chunks in the shared cache (`lamina cache stats`), not here.
            return Ok(Usage::default());
        }
        let (size, inodes) = tokio::task::spawn_blocking(move || disk_usage(&fs))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Usage {
            size: size as i64,
            inodes: inodes as i64,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        let (mounts, union) = {
            let meta = self.meta.lock().await;
            let r = meta.get(&key).ok_or_else(|| not_found(&key))?;
            if r.kind == Kind::Committed {
                return Err(Status::failed_precondition(format!(
                    "snapshot {key:?} is committed: only active and view snapshots have mounts"
                )));
            }
            Self::mounts_of(&meta, r)?
        };
        self.live_mounts(mounts, union).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.create(key, parent, Kind::Active, labels).await
    }

    async fn view(&self, key: String, parent: String, labels: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
        self.create(key, parent, Kind::View, labels).await
    }

    async fn commit(&self, name: String, key: String, labels: HashMap<String, String>) -> Result<(), Status> {
        let mut meta = self.meta.lock().await;
        let mut record = meta.get(&key).cloned().ok_or_else(|| not_found(&key))?;
        if record.kind != Kind::Active {
            return Err(Status::failed_precondition(format!("snapshot {key:?} is not active")));
        }
        if meta.get(&name).is_some() {
            return Err(Status::already_exists(format!("snapshot {name:?} already exists")));
        }
        record.name = name;
        record.kind = Kind::Committed;
        record.labels = labels.into_iter().collect();
        let work = meta.work(record.id);
        meta.replace(&key, record).map_err(io_status("committing a snapshot"))?;
        drop(meta);
        let _ = tokio::fs::remove_dir_all(work).await;
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        let mut meta = self.meta.lock().await;
        let r = meta.get(&key).cloned().ok_or_else(|| not_found(&key))?;
        if meta.has_children(&key) {
            return Err(Status::failed_precondition(format!(
                "snapshot {key:?} has children: remove them first"
            )));
        }
        meta.remove(&key).map_err(io_status("removing a snapshot"))?;
        let (dir, fs) = (meta.dir(r.id), meta.fs(r.id));
        drop(meta);
        if r.remote.is_some() {
            self.unions.release(r.id, &fs);
        }
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a snapshot's directory (Cleanup retries)");
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), Status> {
        let orphans = self.meta.lock().await.orphans();
        for dir in orphans {
            let fs = dir.join("fs");
            if remote::mount_state(&fs) != remote::MountState::Absent {
                let _ = crate::mount::unmount(&fs);
            }
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "cleanup could not remove a directory");
            }
        }
        Ok(())
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream, Status> {
        let filters = filter::parse_all(&filters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let meta = self.meta.lock().await;
        let infos: Vec<Result<Info, Status>> = meta
            .all()
            .filter(|r| filter::matches_any(&filters, |path| field(r, path)))
            .map(|r| Ok(Self::info(r)))
            .collect();
        Ok(tokio_stream::iter(infos))
    }
}

/// A record's field by filter path.
fn field(r: &Record, path: &[String]) -> Option<String> {
    match path {
        [f] if f == "name" => Some(r.name.clone()),
        [f] if f == "parent" => Some(r.parent.clone()),
        [f] if f == "kind" => Some(r.kind.as_str().to_string()),
        [f, label] if f == "labels" => r.labels.get(label).cloned(),
        [f] if f == "labels" => (!r.labels.is_empty()).then(String::new),
        _ => None,
    }
}

/// Bytes (allocated) and inodes under `dir`, each inode counted once, not crossing mounts.
fn disk_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let mut seen = std::collections::HashSet::new();
    let (mut size, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != top.dev() || !seen.insert(m.ino()) {
                continue;
            }
            size += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (size, inodes)
}
