//! Manifests, indexes and configs kept by digest in `CACHE/blobs/sha256/<hex>`, so a mount by
//! digest resolves without the registry ([`DocumentStore`]). A document is checked against
//! its digest each time it is read; one that does not match is removed and not used.
//!
//! The last resolution of each tag is kept in `CACHE/tags/<sha256 of the tag>.json` (the tag,
//! its digest, when), so that a tag resolves while the registry is away (`--pull missing`,
//! `--pull never`).

use bytes::Bytes;

use super::CacheDir;
use crate::digest::Digest;
use crate::registry::resolve::DocumentStore;

/// Largest document kept (an image config's limit).
const MAX_DOCUMENT_BYTES: u64 = crate::registry::manifest::MAX_CONFIG_BYTES;
/// Largest tag record read.
const MAX_TAG_RECORD_BYTES: u64 = 4096;

/// What the cache remembers of a tag.
#[derive(serde::Serialize, serde::Deserialize)]
struct TagRecord {
    /// `registry/repository:tag`.
    tag: String,
    /// The manifest (or index) it resolved to.
    digest: String,
    /// When, in seconds since the epoch.
    resolved_at: u64,
}

impl CacheDir {
    fn tag_path(&self, tag: &str) -> std::path::PathBuf {
        self.root()
            .join("tags")
            .join(format!("{}.json", Digest::of(tag.as_bytes()).hex()))
    }
}

impl DocumentStore for CacheDir {
    fn get(&self, digest: &Digest) -> Option<Bytes> {
        let path = self.blob_path(digest);
        let meta = std::fs::metadata(&path).ok()?;
        if meta.len() > MAX_DOCUMENT_BYTES {
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        if &Digest::of(&bytes) != digest {
            tracing::warn!(path = %path.display(), "a cached document does not match its digest; removing it");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(Bytes::from(bytes))
    }

    fn put(&self, digest: &Digest, bytes: &[u8]) {
        let path = self.blob_path(digest);
        if path.exists() || &Digest::of(bytes) != digest {
            return;
        }
        let tmp = self.temp_path("document");
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn tag(&self, tag: &str) -> Option<(Digest, std::time::SystemTime)> {
        let path = self.tag_path(tag);
        if std::fs::metadata(&path).ok()?.len() > MAX_TAG_RECORD_BYTES {
            return None;
        }
        let record: TagRecord = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        if record.tag != tag {
            return None;
        }
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.resolved_at);
        Some((record.digest.parse().ok()?, at))
    }

    fn put_tag(&self, tag: &str, digest: &Digest) {
        let path = self.tag_path(tag);
        let record = TagRecord {
            tag: tag.to_string(),
            digest: digest.to_string(),
            resolved_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let tmp = self.temp_path("tag");
        let written = std::fs::create_dir_all(path.parent().expect("has a parent"))
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&record).expect("serializable")))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!(error = %e, "could not remember a tag's resolution");
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_come_back_only_while_they_match_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let body = b"{\"schemaVersion\":2}";
        let d = Digest::of(body);
        assert!(cache.get(&d).is_none());
        cache.put(&Digest::of(b"other"), body); // wrong digest: not kept
        assert!(!cache.blob_path(&Digest::of(b"other")).exists());
        cache.put(&d, body);
        assert_eq!(cache.get(&d).unwrap().as_ref(), body);
        std::fs::write(cache.blob_path(&d), b"tampered").unwrap();
        assert!(cache.get(&d).is_none());
        assert!(!cache.blob_path(&d).exists());
    }

    #[test]
    fn a_tag_resolution_is_kept_and_bad_records_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let tag = "r.example:5000/ns/app:1.0";
        assert!(cache.tag(tag).is_none());
        let d = Digest::of(b"manifest");
        cache.put_tag(tag, &d);
        let (got, at) = cache.tag(tag).unwrap();
        assert_eq!(got, d);
        assert!(at.elapsed().unwrap().as_secs() < 3600);
        assert!(cache.tag("r.example:5000/ns/app:2.0").is_none());
        // A record naming another tag (a collision, or planted) or garbage is not used.
        std::fs::write(
            cache.tag_path(tag),
            br#"{"tag":"x","digest":"sha256:00","resolved_at":0}"#,
        )
        .unwrap();
        assert!(cache.tag(tag).is_none());
        std::fs::write(cache.tag_path(tag), b"\xff{").unwrap();
        assert!(cache.tag(tag).is_none());
    }
}
