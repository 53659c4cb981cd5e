//! The snapshotter's records, kept under `ROOT/snapshots/<id>/`:
//!
//! ```text
//! ROOT/snapshots/<id>/info.json   the record (name, parent, kind, labels, times, remote)
//!                     fs/          the snapshot's directory: an overlay upper, or the mount
//!                                  point of a remote snapshot's lamina union
//!                     work/        overlayfs's work directory (active snapshots)
//! ```
//!
//! A record changes by writing `info.json.partial` and renaming it over `info.json`, so a
//! crash leaves the old record or the new one, never half of one: a Commit is one rename.
//! A directory without `info.json` is a Prepare that did not finish (or a Remove that did);
//! `Cleanup` removes it. Names are containerd's keys (`k8s.io/12/extract-… sha256:…`), ids
//! are numbers chosen here, so names never become paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Largest `info.json` read back.
const MAX_RECORD: u64 = 1024 * 1024;

/// A snapshot's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, not committed.
    View,
    /// Writable, may be committed.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    /// containerd's word for it, as filters use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What a remote snapshot serves: the first `layers` layers of `image`, merged by lamina.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remote {
    /// The image by digest: `registry/repository@sha256:…`.
    pub image: String,
    /// How many layers, bottom first.
    pub layers: usize,
}

/// One snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Its number, naming its directory.
    pub id: u64,
    /// containerd's key for it.
    pub name: String,
    /// The parent's name, or empty.
    pub parent: String,
    /// Its kind.
    pub kind: Kind,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was made.
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
    /// Set for a layer lamina serves lazily.
    #[serde(default)]
    pub remote: Option<Remote>,
}

/// Every snapshot, by name.
pub struct Meta {
    root: PathBuf,
    records: BTreeMap<String, Record>,
    next_id: u64,
    /// Directories whose record could not be read: never served, never cleaned up.
    unreadable: std::collections::HashSet<u64>,
}

impl Meta {
    /// Load the records under `root` (made if missing). A record that cannot be read is
    /// left on disk and reported, not served.
    pub fn open(root: &Path) -> std::io::Result<Meta> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        let mut records = BTreeMap::new();
        let mut next_id = 1;
        let mut unreadable = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            next_id = next_id.max(id + 1);
            let info = entry.path().join("info.json");
            match read_record(&info) {
                Ok(Some(r)) if r.id == id => {
                    records.insert(r.name.clone(), r);
                }
                Ok(Some(_)) => {
                    tracing::warn!(path = %info.display(), "record names another id; left alone");
                    unreadable.insert(id);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %info.display(), error = %e, "unreadable snapshot record; left alone");
                    unreadable.insert(id);
                }
            }
        }
        Ok(Meta {
            root: root.to_path_buf(),
            records,
            next_id,
            unreadable,
        })
    }

    /// The snapshot named `name`.
    pub fn get(&self, name: &str) -> Option<&Record> {
        self.records.get(name)
    }

    /// Every snapshot.
    pub fn all(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Whether any snapshot has `name` as its parent.
    pub fn has_children(&self, name: &str) -> bool {
        self.records.values().any(|r| r.parent == name)
    }

    /// The directory of snapshot `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The `fs` directory of snapshot `id`.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// The `work` directory of snapshot `id`.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Make a new snapshot: its directories first, its record last.
    pub fn create(
        &mut self,
        name: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
        remote: Option<Remote>,
    ) -> std::io::Result<Record> {
        if self.records.contains_key(name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("snapshot {name:?} already exists"),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        std::fs::create_dir_all(self.fs(id))?;
        sync_dir(&self.root.join("snapshots"));
        if kind == Kind::Active {
            std::fs::create_dir_all(self.work(id))?;
        }
        let now = SystemTime::now();
        let record = Record {
            id,
            name: name.to_string(),
            parent: parent.to_string(),
            kind,
            labels,
            created: now,
            updated: now,
            remote,
        };
        self.write(&record)?;
        self.records.insert(record.name.clone(), record.clone());
        Ok(record)
    }

    /// Replace the record of the snapshot currently named `old_name` (a Commit renames it).
    pub fn replace(&mut self, old_name: &str, mut record: Record) -> std::io::Result<Record> {
        record.updated = SystemTime::now();
        self.write(&record)?;
        self.records.remove(old_name);
        self.records.insert(record.name.clone(), record.clone());
        Ok(record)
    }

    /// Forget the snapshot `name`: its record goes at once; its directory is the caller's
    /// to remove (it may be a mount point first).
    pub fn remove(&mut self, name: &str) -> std::io::Result<Option<Record>> {
        let Some(r) = self.records.get(name) else {
            return Ok(None);
        };
        let info = self.dir(r.id).join("info.json");
        match std::fs::remove_file(&info) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sync_dir(&self.dir(r.id));
        Ok(self.records.remove(name))
    }

    /// Directories under `snapshots/` that no record owns.
    pub fn orphans(&self) -> Vec<PathBuf> {
        let owned: std::collections::HashSet<u64> = self.records.values().map(|r| r.id).collect();
        let Ok(entries) = std::fs::read_dir(self.root.join("snapshots")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|id| !owned.contains(&id) && !self.unreadable.contains(&id))
            })
            .map(|e| e.path())
            .collect()
    }

    fn write(&self, record: &Record) -> std::io::Result<()> {
        use std::io::Write as _;
        let dir = self.dir(record.id);
        let tmp = dir.join("info.json.partial");
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        if text.len() as u64 > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "snapshot record over 1 MiB (too many or too long labels)",
            ));
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("info.json"))?;
        sync_dir(&dir);
        Ok(())
    }
}

fn read_record(path: &Path) -> std::io::Result<Option<Record>> {
    use std::io::Read as _;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = Vec::new();
    f.take(MAX_RECORD + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_RECORD {
        return Err(std::io::Error::other("record over 1 MiB"));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_commit_is_one_rename() {
        let root = tempfile::tempdir().unwrap();
        let mut meta = Meta::open(root.path()).unwrap();
        let labels = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let base = meta
            .create("ns/1/base", "", Kind::Active, labels.clone(), None)
            .unwrap();
        let mut committed = base.clone();
        committed.name = "ns/2/layer".into();
        committed.kind = Kind::Committed;
        meta.replace("ns/1/base", committed).unwrap();
        let top = meta
            .create("ns/3/top", "ns/2/layer", Kind::Active, BTreeMap::new(), None)
            .unwrap();
        assert!(meta.fs(top.id).is_dir() && meta.work(top.id).is_dir());
        // A Prepare that stopped before its record: a directory without info.json.
        std::fs::create_dir_all(root.path().join("snapshots/99/fs")).unwrap();

        let meta = Meta::open(root.path()).unwrap();
        assert!(meta.get("ns/1/base").is_none());
        let layer = meta.get("ns/2/layer").unwrap();
        assert_eq!((layer.kind, &layer.labels), (Kind::Committed, &labels));
        assert!(meta.has_children("ns/2/layer"));
        assert_eq!(meta.orphans(), vec![root.path().join("snapshots/99")]);
        let mut meta = meta;
        let fresh = meta.create("ns/4/x", "", Kind::View, BTreeMap::new(), None).unwrap();
        assert_eq!(fresh.id, 100, "ids are never reused, even an orphan's");
    }

    #[test]
    fn an_unreadable_record_is_skipped() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("snapshots/7")).unwrap();
        std::fs::write(root.path().join("snapshots/7/info.json"), b"{not json").unwrap();
        let meta = Meta::open(root.path()).unwrap();
        assert_eq!(meta.all().count(), 0);
        assert!(meta.orphans().is_empty(), "Cleanup must not remove what it cannot read");
    }
}
