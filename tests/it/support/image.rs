//! Images built by real tools: `umoci` builds and unpacks, `skopeo` pushes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// An OCI image layout on disk, driven by umoci.
pub struct Umoci {
    /// The layout directory.
    pub layout: PathBuf,
}

impl Umoci {
    /// `umoci init` + `umoci new` for `tag`.
    pub fn init(layout: &Path, tag: &str) -> Umoci {
        run(Command::new("umoci").arg("init").arg("--layout").arg(layout));
        let u = Umoci {
            layout: layout.to_path_buf(),
        };
        run(Command::new("umoci").arg("new").arg("--image").arg(u.image(tag)));
        u
    }

    /// `LAYOUT:TAG`
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.layout.display())
    }

    /// `umoci unpack` into a bundle; the rootfs is `bundle/rootfs`.
    pub fn unpack(&self, tag: &str, bundle: &Path) {
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(self.image(tag))
            .arg(bundle));
    }

    /// `umoci repack --refresh-bundle`: the bundle's changes become a new layer.
    pub fn repack(&self, tag: &str, bundle: &Path) {
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image"])
            .arg(self.image(tag))
            .arg(bundle));
    }

    /// `umoci config` with `args` (e.g. `--config.user app`).
    pub fn config(&self, tag: &str, args: &[&str]) {
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(self.image(tag))
            .args(args));
    }

    /// `umoci raw add-layer`: append an uncompressed tar verbatim.
    pub fn add_layer(&self, tag: &str, tar: &Path) {
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image"])
            .arg(self.image(tag))
            .arg(tar));
    }
}

/// `skopeo copy oci:LAYOUT:TAG docker://DEST` over plain HTTP. `all` copies every platform.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>, all: bool) {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if all {
        c.arg("--all");
    }
    if let Some(cr) = creds {
        c.arg("--dest-creds").arg(cr);
    }
    c.arg(format!("oci:{}:{tag}", layout.display()));
    c.arg(format!("docker://{dest}"));
    run(&mut c);
}
