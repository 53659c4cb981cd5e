//! Where images live for commands that read and write whole images (`convert`): a registry
//! repository, or an OCI image layout on disk (`oci:PATH[:TAG]`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex};

use crate::digest::Digest;
use crate::oci::document;
use crate::reference::ImageRef;
use crate::registry::{Access, Body, ClientOptions, Registry, RegistryError};

/// Tag annotation in an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An image location as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageLocation {
    /// `[registry/]repo[:tag][@digest]`
    Registry(ImageRef),
    /// `oci:PATH[:TAG]` (tag `latest` when absent).
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The tag.
        tag: String,
    },
}

impl std::str::FromStr for ImageLocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, t),
                _ => (rest, "latest"),
            };
            if path.is_empty() || tag.is_empty() {
                return Err(format!("invalid OCI layout location {s:?}: expected oci:PATH[:TAG]"));
            }
            return Ok(ImageLocation::Layout {
                path: PathBuf::from(path),
                tag: tag.to_string(),
            });
        }
        ImageRef::parse(s)
            .map(ImageLocation::Registry)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageLocation::Registry(r) => write!(f, "{r}"),
            ImageLocation::Layout { path, tag } => write!(f, "oci:{}:{tag}", path.display()),
        }
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The layout failed.
    #[error("OCI layout {path}: {reason}")]
    Layout {
        /// The layout.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// An opened image store.
pub enum Store {
    /// A registry repository.
    Registry {
        /// The client.
        registry: Arc<Registry>,
        /// The repository.
        repo: String,
    },
    /// An OCI layout directory.
    Layout {
        /// The layout.
        path: PathBuf,
    },
}

impl Store {
    /// Open the store of `location`; a layout is created when `create` is set.
    pub fn open(location: &ImageLocation, client: &ClientOptions, create: bool) -> Result<Store, StoreError> {
        match location {
            ImageLocation::Registry(r) => Ok(Store::Registry {
                registry: Arc::new(Registry::new(&r.registry, r.api_host(), client)?),
                repo: r.repository.clone(),
            }),
            ImageLocation::Layout { path, .. } => {
                let fail = |reason: String| StoreError::Layout {
                    path: path.clone(),
                    reason,
                };
                if create {
                    std::fs::create_dir_all(path.join("blobs/sha256")).map_err(|e| fail(e.to_string()))?;
                    if !path.join("oci-layout").exists() {
                        std::fs::write(path.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
                            .map_err(|e| fail(e.to_string()))?;
                    }
                    if !path.join("index.json").exists() {
                        std::fs::write(path.join("index.json"), r#"{"schemaVersion":2,"manifests":[]}"#)
                            .map_err(|e| fail(e.to_string()))?;
                    }
                } else if !path.join("index.json").is_file() {
                    return Err(fail("not an OCI image layout (no index.json)".into()));
                }
                Ok(Store::Layout { path: path.clone() })
            }
        }
    }

    fn layout_err(path: &Path, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Layout {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// A manifest or index by tag or digest: (body, media type if known, digest).
    pub async fn manifest(&self, reference: &str) -> Result<(Bytes, Option<String>, Digest), StoreError> {
        match self {
            Store::Registry { registry, repo } => Ok(registry.manifest(repo, reference).await?),
            Store::Layout { path } => {
                let (digest, media_type) = match reference.parse::<Digest>() {
                    Ok(d) => (d, None),
                    Err(_) => {
                        let index = read_index(path)?;
                        let entry = index
                            .manifests()
                            .iter()
                            .find(|m| ref_name(m) == Some(reference))
                            .ok_or_else(|| Self::layout_err(path, format!("no image tagged {reference:?}")))?;
                        let digest = entry
                            .digest()
                            .to_string()
                            .parse()
                            .map_err(|e| Self::layout_err(path, e))?;
                        (digest, Some(entry.media_type().to_string()))
                    }
                };
                let body = self
                    .blob_bytes(&digest, crate::registry::manifest::MAX_MANIFEST_BYTES)
                    .await?;
                Ok((body, media_type, digest))
            }
        }
    }

    /// A small blob, verified.
    pub async fn blob_bytes(&self, digest: &Digest, limit_bytes: u64) -> Result<Bytes, StoreError> {
        match self {
            Store::Registry { registry, repo } => Ok(registry.blob_bytes(repo, digest, limit_bytes).await?),
            Store::Layout { path } => {
                let p = path.join("blobs/sha256").join(digest.hex());
                let len = std::fs::metadata(&p)
                    .map_err(|e| Self::layout_err(path, format!("blob {digest}: {e}")))?
                    .len();
                if len > limit_bytes {
                    return Err(Self::layout_err(
                        path,
                        format!("blob {digest} is over {limit_bytes} bytes"),
                    ));
                }
                let data = std::fs::read(&p).map_err(|e| Self::layout_err(path, format!("blob {digest}: {e}")))?;
                let actual = Digest::of(&data);
                if &actual != digest {
                    return Err(Self::layout_err(path, format!("blob {digest} has digest {actual}")));
                }
                Ok(data.into())
            }
        }
    }

    /// The path of a blob file in a layout (None for registries).
    pub fn layout_blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        match self {
            Store::Layout { path } => Some(path.join("blobs/sha256").join(digest.hex())),
            Store::Registry { .. } => None,
        }
    }

    /// Store a blob from a file unless it is there already.
    pub async fn put_blob_file(&self, digest: &Digest, file: &Path, len_bytes: u64) -> Result<(), StoreError> {
        match self {
            Store::Registry { registry, repo } => Ok(registry
                .upload_blob(
                    repo,
                    digest,
                    Body::File {
                        path: file.to_path_buf(),
                        len_bytes,
                    },
                )
                .await?),
            Store::Layout { path } => {
                let dest = path.join("blobs/sha256").join(digest.hex());
                if dest.exists() {
                    return Ok(());
                }
                let tmp = dest.with_extension("partial");
                std::fs::copy(file, &tmp).map_err(|e| Self::layout_err(path, e))?;
                std::fs::rename(&tmp, &dest).map_err(|e| Self::layout_err(path, e))
            }
        }
    }

    /// Store a small blob unless it is there already.
    pub async fn put_blob_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Registry { registry, repo } => Ok(registry.upload_blob(repo, digest, Body::Bytes(data)).await?),
            Store::Layout { path } => {
                let dest = path.join("blobs/sha256").join(digest.hex());
                if !dest.exists() {
                    std::fs::write(&dest, &data).map_err(|e| Self::layout_err(path, e))?;
                }
                Ok(())
            }
        }
    }

    /// Whether the store has a blob.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self {
            Store::Registry { registry, repo } => Ok(registry.blob_exists(repo, digest, Access::Pull).await?),
            Store::Layout { path } => Ok(path.join("blobs/sha256").join(digest.hex()).exists()),
        }
    }

    /// Store a manifest or index; tag it when `tag` is given.
    pub async fn put_manifest(&self, tag: Option<&str>, media_type: &str, body: Bytes) -> Result<Digest, StoreError> {
        let digest = Digest::of(&body);
        match self {
            Store::Registry { registry, repo } => {
                let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
                Ok(registry.put_manifest(repo, &reference, media_type, body).await?)
            }
            Store::Layout { path } => {
                let size = body.len();
                self.put_blob_bytes(&digest, body).await?;
                if let Some(tag) = tag {
                    let mut index = read_index(path)?;
                    let mut manifests = index.manifests().clone();
                    manifests.retain(|m| ref_name(m) != Some(tag));
                    let annotations = [(REF_NAME_ANNOTATION.to_string(), tag.to_string())].into();
                    manifests.push(document::descriptor(
                        media_type,
                        &digest,
                        size as u64,
                        Some(annotations),
                    ));
                    index.set_manifests(manifests);
                    let text = document::canonical_json(&index).map_err(|e| Self::layout_err(path, e))?;
                    let tmp = path.join("index.json.partial");
                    std::fs::write(&tmp, text).map_err(|e| Self::layout_err(path, e))?;
                    std::fs::rename(&tmp, path.join("index.json")).map_err(|e| Self::layout_err(path, e))?;
                }
                Ok(digest)
            }
        }
    }
}

/// The `org.opencontainers.image.ref.name` of a layout's index entry.
fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME_ANNOTATION).map(String::as_str)
}

fn read_index(path: &Path) -> Result<ImageIndex, StoreError> {
    let text =
        std::fs::read(path.join("index.json")).map_err(|e| Store::layout_err(path, format!("index.json: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| Store::layout_err(path, format!("index.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let cases = [
            ("oci:/tmp/x:v1", Some(("/tmp/x", "v1"))),
            ("oci:/tmp/x", Some(("/tmp/x", "latest"))),
            ("oci:rel/dir:t", Some(("rel/dir", "t"))),
        ];
        for (s, want) in cases {
            match (s.parse::<ImageLocation>().unwrap(), want) {
                (ImageLocation::Layout { path, tag }, Some((p, t))) => {
                    assert_eq!((path.to_str().unwrap(), tag.as_str()), (p, t))
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        assert!(matches!(
            "localhost:5000/x:t".parse::<ImageLocation>().unwrap(),
            ImageLocation::Registry(_)
        ));
        assert!("oci:".parse::<ImageLocation>().is_err());
        assert!("Bad/Ref".parse::<ImageLocation>().is_err());
    }
}
