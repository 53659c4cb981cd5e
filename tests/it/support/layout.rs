//! Images built by hand, for what umoci does not emit (opaque directories, devices, hostile
//! entries, odd media types, several platforms): raw tar bytes, an OCI layout written
//! directly, pushed with skopeo.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One tar entry to write.
pub enum Entry<'a> {
    /// Directory with mode.
    Dir(&'a str, u32),
    /// Regular file with mode and content.
    File(&'a str, u32, &'a [u8]),
    /// Symlink → target.
    Symlink(&'a str, &'a str),
    /// Hard link → target.
    Link(&'a str, &'a str),
    /// Character device (major, minor).
    Char(&'a str, u32, u32),
    /// Block device (major, minor).
    Block(&'a str, u32, u32),
    /// Fifo.
    Fifo(&'a str),
}

/// name, type, mode, data, link target, device numbers
type RawEntry<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>, (u32, u32));

/// An uncompressed tar made of `entries`; names are written raw, so `..` and absolute paths
/// survive (the tar crate's own path setter refuses them).
pub fn tar_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, kind, mode, data, link, dev): RawEntry<'_> = match e {
            Entry::Dir(n, m) => (n, tar::EntryType::Directory, *m, b"", None, (0, 0)),
            Entry::File(n, m, d) => (n, tar::EntryType::Regular, *m, d, None, (0, 0)),
            Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, b"", Some(t), (0, 0)),
            Entry::Link(n, t) => (n, tar::EntryType::Link, 0o644, b"", Some(t), (0, 0)),
            Entry::Char(n, ma, mi) => (n, tar::EntryType::Char, 0o666, b"", None, (*ma, *mi)),
            Entry::Block(n, ma, mi) => (n, tar::EntryType::Block, 0o660, b"", None, (*ma, *mi)),
            Entry::Fifo(n) => (n, tar::EntryType::Fifo, 0o644, b"", None, (0, 0)),
        };
        assert!(name.len() < 100, "test names must fit a ustar header");
        let raw = h.as_old_mut();
        raw.name = [0; 100];
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            raw.linkname = [0; 100];
            raw.linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// gzip-compress.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A layer blob with its media type and the digest of its uncompressed tar.
#[derive(Clone)]
pub struct Layer {
    /// The blob bytes.
    pub blob: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    /// Descriptor annotations (zstd:chunked's TOC position and checksum), if any.
    pub annotations: Option<serde_json::Value>,
}

impl Layer {
    /// A gzip layer from tar entries.
    pub fn gzip(entries: &[Entry<'_>]) -> Layer {
        Layer::gzip_tar(&tar_bytes(entries))
    }

    /// A gzip layer from raw tar bytes.
    pub fn gzip_tar(tar: &[u8]) -> Layer {
        Layer {
            blob: gzip(tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: sha(tar),
            annotations: None,
        }
    }

    /// An uncompressed layer from raw tar bytes.
    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            diff_id: sha(&tar),
            blob: tar,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            annotations: None,
        }
    }
}

/// An OCI image layout written directly.
pub struct Layout {
    /// The layout directory.
    pub dir: PathBuf,
    index: Vec<serde_json::Value>,
}

impl Layout {
    /// An empty layout at `dir`.
    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        }
    }

    /// Store a blob; returns its descriptor fields (digest, size).
    pub fn blob(&self, data: &[u8]) -> (String, usize) {
        let d = sha(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        (d, data.len())
    }

    /// Write an image manifest for `layers` (and `arch`); returns its descriptor JSON.
    pub fn image(&self, layers: &[Layer], arch: &str) -> serde_json::Value {
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let (cd, cs) = self.blob(&config);
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let (d, s) = self.blob(&l.blob);
                let mut desc = serde_json::json!({"mediaType": l.media_type, "digest": d, "size": s});
                if let Some(a) = &l.annotations {
                    desc["annotations"] = a.clone();
                }
                desc
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layer_descs,
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let (md, ms) = self.blob(&manifest);
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"os": "linux", "architecture": arch},
        })
    }

    /// Tag a descriptor (manifest or index) in index.json.
    pub fn tag(&mut self, tag: &str, mut desc: serde_json::Value) {
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(desc);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// Write an image index over several manifest descriptors; returns its descriptor.
    pub fn index_of(&self, manifests: Vec<serde_json::Value>) -> serde_json::Value {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let (d, s) = self.blob(&bytes);
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    }
}

/// An image of `layers` (linux/amd64) in a layout `w/layout-REPO`, pushed as `ADDR/REPO:t`,
/// which is returned.
pub fn push_layers(w: &Path, addr: &str, repo: &str, layers: &[Layer]) -> String {
    let mut layout = Layout::create(&w.join(format!("layout-{repo}")));
    let desc = layout.image(layers, "amd64");
    layout.tag("t", desc);
    let image = format!("{addr}/{repo}:t");
    super::image::skopeo_push(&layout.dir, "t", &image, None, false);
    image
}
