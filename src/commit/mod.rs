//! `lamina commit`: a writable layer's changes as a new image.
//!
//! ```text
//! upper dir ──(layer::write_layer: OCI whiteouts, opaque markers, hard links, xattrs)──► tar
//!   ──► zstd:chunked writer ──► cache/blobs (the new layer)
//! base image (pinned by the manifest digest the upper was made for)
//!   config + diff_id + history entry ──► new config
//!   layers + the new one             ──► new OCI manifest ──► DST (registry or oci: layout)
//! ```
//!
//! The base layers reach DST by cross-repository mount when DST is another repository of the
//! same registry, else by download and upload; nothing is sent that DST has.

pub mod layer;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::cache::CacheDir;
use crate::digest::Digest;
use crate::format::writer::{write_zstd_chunked, WriterOptions};
use crate::oci::document;
use crate::oci::media_types::{oci_layer_type, OCI_CONFIG, OCI_LAYER_ZSTD, OCI_MANIFEST};
use crate::reference::ImageRef;
use crate::registry::blob::Spool;
use crate::registry::manifest;
use crate::registry::resolve::{layers_of, Layer};
use crate::registry::{ClientOptions, Registry};
use crate::store::{ImageLocation, Store};
use crate::upper::Identity;

pub use layer::LayerSummary;

/// Settings for a commit.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// The cache directory (the new layer's blob is kept there).
    pub cache_dir: PathBuf,
    /// Registry settings.
    pub client: ClientOptions,
    /// Chunking and compression of the new layer.
    pub writer: WriterOptions,
    /// The history entry's `created_by`.
    pub created_by: String,
    /// The history entry's comment, if any.
    pub message: Option<String>,
}

/// What a commit made.
#[derive(Debug)]
pub struct CommitReport {
    /// The image the changes were made to.
    pub base: String,
    /// Digest of the new manifest.
    pub manifest_digest: Digest,
    /// The new layer's blob.
    pub layer_digest: Digest,
    /// Its compressed size.
    pub layer_size: u64,
    /// Its uncompressed digest.
    pub diff_id: Digest,
    /// What went into it.
    pub summary: LayerSummary,
    /// Base layers DST lacked and got by cross-repository mount / by upload.
    pub base_layers_mounted: usize,
    /// Base layers uploaded.
    pub base_layers_uploaded: usize,
}

/// A commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Reading or writing an image store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The upper directory cannot be committed.
    #[error("{0}")]
    Upper(String),
    /// Local I/O.
    #[error("{what}: {err}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        err: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CommitError {
    let what = what.into();
    move |err| CommitError::Io { what, err }
}

/// The base image of an upper directory, pinned to the manifest it was made for.
pub fn base_reference(identity: &Identity) -> Result<ImageRef, CommitError> {
    let mut r = ImageRef::parse(&identity.image)
        .map_err(|e| CommitError::Upper(format!("the upper names its image as {:?}: {e}", identity.image)))?;
    if let Some(d) = &identity.manifest {
        r.digest = Some(
            d.parse()
                .map_err(|e| CommitError::Upper(format!("the upper's manifest digest {d:?}: {e}")))?,
        );
    }
    Ok(r)
}

/// Commit the upper directory `upper_dir` (the directory given to `--upper`; `view` is the
/// merged view of a mount of it, needed when directories were moved) to `dst`.
pub async fn commit(
    upper_dir: &Path,
    view: Option<&Path>,
    dst: &ImageLocation,
    options: &CommitOptions,
) -> Result<CommitReport, CommitError> {
    let dst_tag = match dst {
        ImageLocation::Registry(r) if r.digest.is_some() => {
            return Err(CommitError::Upper(format!(
                "destination {dst} names a digest; give a tag"
            )))
        }
        ImageLocation::Registry(r) => r.tag.clone().unwrap_or_else(|| "latest".into()),
        ImageLocation::Layout { tag, .. } => tag.clone(),
    };
    let identity = Identity::read(upper_dir).map_err(|e| CommitError::Upper(e.to_string()))?;
    let base = base_reference(&identity)?;
    let registry = Arc::new(Registry::new(&base.registry, base.api_host(), &options.client)?);
    let (body, content_type, manifest_digest) = registry.manifest(&base.repository, &base.manifest_reference()).await?;
    let manifest::Manifest::Image(base_manifest) =
        manifest::parse_manifest(&base.to_string(), content_type.as_deref(), &body)?
    else {
        return Err(CommitError::Upper(format!(
            "{base} is an index; the upper was made for one of its images (mount it again to record which)"
        )));
    };
    let config_digest = manifest::descriptor_digest(base_manifest.config())?;
    let config_bytes = registry
        .blob_bytes(&base.repository, &config_digest, manifest::MAX_CONFIG_BYTES)
        .await?;
    let config = manifest::parse_config(&base.to_string(), &config_bytes)?;
    let layers = layers_of(&base.to_string(), &base_manifest, &config)?;
    let digests: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    if digests != identity.layers {
        return Err(CommitError::Upper(format!(
            "{} ({manifest_digest}) has other layers than the ones {} holds changes to; \
             its tag moved since (commit needs the image the changes were made to)",
            identity.image,
            upper_dir.display()
        )));
    }

    // The new layer.
    let cache = CacheDir::open(&options.cache_dir).map_err(io(format!("cache {}", options.cache_dir.display())))?;
    let root_path = upper_dir.join("upper");
    let root = rustix::fs::open(
        &root_path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io(root_path.display().to_string())(e.into()))?;
    let view_fd = view
        .map(|v| {
            rustix::fs::open(
                v,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| io(v.display().to_string())(e.into()))
        })
        .transpose()?;
    let tar_path = cache.temp_path("commit-tar");
    let out_path = cache.temp_path("commit-layer");
    let (writer_options, tp, op) = (options.writer.clone(), tar_path.clone(), out_path.clone());
    let made = tokio::task::spawn_blocking(move || -> Result<_, CommitError> {
        let file = std::fs::File::create(&tp).map_err(io(tp.display().to_string()))?;
        let (file, summary) = layer::write_layer(
            root.as_fd(),
            view_fd.as_ref().map(|v| v.as_fd()),
            std::io::BufWriter::new(file),
        )
        .map_err(io("writing the layer"))?;
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(io(tp.display().to_string()))?;
        let tar = std::io::BufReader::new(std::fs::File::open(&tp).map_err(io(tp.display().to_string()))?);
        let out = std::io::BufWriter::new(std::fs::File::create(&op).map_err(io(op.display().to_string()))?);
        let written = write_zstd_chunked(tar, out, &writer_options).map_err(io("compressing the layer"))?;
        Ok((written, summary))
    })
    .await
    .map_err(|e| CommitError::Upper(format!("layer writer: {e}")));
    let _ = std::fs::remove_file(&tar_path);
    let (written, summary) = match made.and_then(|r| r) {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&out_path);
            return Err(e);
        }
    };
    let blob = cache.blob_path(&written.digest);
    std::fs::rename(&out_path, &blob).map_err(io("keeping the layer blob"))?;

    // Base layers into DST.
    let dst_store = Store::open(dst, &options.client, true)?;
    let (mut mounted, mut uploaded) = (0, 0);
    for l in &layers {
        if dst_store.has_blob(&l.digest).await? {
            continue;
        }
        if let (Store::Registry { registry: r, repo }, ImageLocation::Registry(d)) = (&dst_store, dst) {
            if d.registry == base.registry && r.mount_blob(repo, &l.digest, &base.repository).await? {
                mounted += 1;
                continue;
            }
        }
        copy_layer(&registry, &base.repository, l, &cache, &dst_store).await?;
        uploaded += 1;
    }
    dst_store.put_blob_file(&written.digest, &blob, written.size).await?;

    // The new config: one more diff_id and history entry.
    let mut config_json: serde_json::Value =
        serde_json::from_slice(&config_bytes).map_err(|e| CommitError::Upper(format!("base config: {e}")))?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    config_json["created"] = now.clone().into();
    let diff_ids = &mut config_json["rootfs"]["diff_ids"];
    match diff_ids.as_array_mut() {
        Some(a) => a.push(written.diff_id.to_string().into()),
        None => return Err(CommitError::Upper("base config has no rootfs.diff_ids".into())),
    }
    let mut history = oci_spec::image::History::default();
    history.set_created(Some(now.clone()));
    history.set_created_by(Some(options.created_by.clone()));
    history.set_comment(options.message.clone());
    let entry = serde_json::to_value(&history).map_err(|e| CommitError::Upper(e.to_string()))?;
    match config_json["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => config_json["history"] = serde_json::json!([entry]),
    }
    let new_config = Bytes::from(serde_json::to_vec(&config_json).map_err(|e| CommitError::Upper(e.to_string()))?);
    let new_config_digest = Digest::of(&new_config);
    dst_store.put_blob_bytes(&new_config_digest, new_config.clone()).await?;

    let mut layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            document::descriptor(
                oci_layer_type(&l.media_type),
                &l.digest,
                l.size,
                Some(l.annotations.clone()),
            )
        })
        .collect();
    layer_descs.push(document::descriptor(
        OCI_LAYER_ZSTD,
        &written.digest,
        written.size,
        Some(written.annotations.clone()),
    ));
    let config = document::descriptor(OCI_CONFIG, &new_config_digest, new_config.len() as u64, None);
    let new_manifest = document::image_manifest(config, layer_descs, None, None, None);
    let body = Bytes::from(document::canonical_json(&new_manifest).map_err(|e| CommitError::Upper(e.to_string()))?);
    let digest = dst_store.put_manifest(Some(&dst_tag), OCI_MANIFEST, body).await?;
    Ok(CommitReport {
        base: format!("{}@{manifest_digest}", identity.image),
        manifest_digest: digest,
        layer_digest: written.digest,
        layer_size: written.size,
        diff_id: written.diff_id,
        summary,
        base_layers_mounted: mounted,
        base_layers_uploaded: uploaded,
    })
}

/// Download a base layer (verified) and store it in `dst`.
async fn copy_layer(
    registry: &Arc<Registry>,
    repo: &str,
    layer: &Layer,
    cache: &CacheDir,
    dst: &Store,
) -> Result<(), CommitError> {
    let blob = cache.blob_path(&layer.digest);
    if blob.exists() {
        return Ok(dst.put_blob_file(&layer.digest, &blob, layer.size).await?);
    }
    let spool = Spool::create(&cache.temp_path("base-layer")).map_err(io("spool"))?;
    let result =
        crate::registry::blob::download_layer(registry.clone(), repo.to_string(), layer.clone(), spool.clone(), |_| {})
            .await;
    let stored = match result {
        Ok(()) => dst
            .put_blob_file(&layer.digest, spool.path(), layer.size)
            .await
            .map_err(Into::into),
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_file(spool.path());
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_pinned_to_the_recorded_manifest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let id = Identity {
            image: "localhost:5000/app:1".into(),
            manifest: Some(d.clone()),
            layers: vec![],
            metacopy: false,
        };
        let r = base_reference(&id).unwrap();
        assert_eq!(r.digest.unwrap().to_string(), d);
        assert_eq!(r.repository, "app");
        let old = Identity { manifest: None, ..id };
        assert!(base_reference(&old).unwrap().digest.is_none());
    }
}
