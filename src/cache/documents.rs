//! Manifests, indexes and configs kept by digest in `CACHE/blobs/sha256/<hex>`, so a mount by
//! digest resolves without the registry ([`DocumentStore`]). A document is checked against
//! its digest each time it is read; one that does not match is removed and not used.

use bytes::Bytes;

use super::CacheDir;
use crate::digest::Digest;
use crate::registry::resolve::DocumentStore;

/// Largest document kept (an image config's limit).
const MAX_DOCUMENT_BYTES: u64 = crate::registry::manifest::MAX_CONFIG_BYTES;

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
}
