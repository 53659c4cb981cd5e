//! The workloads: images built from Debian packages (scripts/build-image.sh), pushed to the
//! registry as made (`gzip`) and converted (`zc`), with the command each one starts, as the
//! engine's [`lamina::bench::Workload`]s.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lamina::bench::{Launcher, Workload};

use crate::common::lamina;
use crate::support::layout::{Entry, Layer, Layout};
use crate::support::registry::TestRegistry;
use crate::support::run;

/// A run may take this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// A built-in workload before it is published: its name, repository and command.
struct Builtin {
    name: &'static str,
    /// Image built in the registry: `gzip` (as made) and `zc` (converted) tags.
    repo: String,
    cmd: Vec<String>,
}

/// The suite's commands start with `chroot` and a clean environment (the images' configs
/// hold nothing they need).
struct Chroot(Vec<String>);

impl Launcher for Chroot {
    fn spawn(&self, root: &Path) -> std::io::Result<Child> {
        Command::new("/usr/sbin/chroot")
            .arg(root)
            .args(&self.0)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    }

    fn argv(&self) -> Vec<String> {
        self.0.clone()
    }
}

/// Build and publish the `wanted` workloads, in the order distro, python, app, weights.
/// Images: the Debian image of scripts/build-image.sh (its base layer alone is the distro
/// image), its `app` variant, and a large-file image (distro + a 128 MiB "weights" file);
/// `tree` reads every file of the python image.
pub fn publish_all(root: &str, registry: &TestRegistry, w: &Path, wanted: &[String]) -> Vec<Workload> {
    builtins(root, registry, w, wanted)
        .into_iter()
        .map(|b| Workload {
            name: b.name.to_string(),
            registry: registry.addr.clone(),
            full_image: format!("{}:gzip", b.repo),
            lazy_image: format!("{}:zc", b.repo),
            gzip_image: Some(format!("{}:gzip", b.repo)),
            lazy_digest: Some(manifest_digest(root, registry, &b.repo)),
            lazy_layer_bytes: Some(layer_bytes(registry, &b.repo)),
            check_blob: largest_blob_path(registry, &b.repo, 200 << 20),
            launcher: Arc::new(Chroot(b.cmd)),
            ready_when: None,
            timeout: RUN_TIMEOUT,
        })
        .collect()
}

fn builtins(root: &str, registry: &TestRegistry, w: &Path, wanted: &[String]) -> Vec<Builtin> {
    let wants = |name: &str| wanted.iter().any(|x| x == name);
    let python_layout = build_image(root, None);
    let cache_root = Path::new(python_layout.split(':').next().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let minbase = cache_root.join("minbase");
    let base_tar = w.join("base.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&minbase)
        .arg("-cf")
        .arg(&base_tar)
        .arg("."));
    let base = Layer::gzip_tar(&std::fs::read(&base_tar).unwrap());
    let mut workloads = Vec::new();
    if wants("distro") {
        let mut l = Layout::create(&w.join("distro-layout"));
        let d = l.image(std::slice::from_ref(&base), "amd64");
        l.tag("t", d);
        publish(root, registry, &format!("{}:t", l.dir.display()), "suite/distro", w);
        workloads.push(Builtin {
            name: "distro",
            repo: "suite/distro".into(),
            cmd: vec!["sh".into(), "-c".into(), "true".into()],
        });
    }
    if wants("python") {
        publish(root, registry, &python_layout, "suite/python", w);
        workloads.push(Builtin {
            name: "python",
            repo: "suite/python".into(),
            cmd: vec![
                "python3".into(),
                "-c".into(),
                "import json, yaml, email.parser, http.client, decimal; print('ready')".into(),
            ],
        });
    }
    if wants("tree") {
        // Every file of the python image read once, in the order tar walks the tree: a bulk
        // reader (backup, scan, copy), the worst case for one request per file.
        if !wants("python") {
            publish(root, registry, &python_layout, "suite/python", w);
        }
        workloads.push(Builtin {
            name: "tree",
            repo: "suite/python".into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "tar -cf - --one-file-system -C / . | cat > /dev/null".into(),
            ],
        });
    }
    if wants("app") {
        publish(root, registry, &build_image(root, Some("app")), "suite/app", w);
        workloads.push(Builtin {
            name: "app",
            repo: "suite/app".into(),
            cmd: ["gcc", "-pipe", "-c", "/app/hello.c", "-o", "/dev/null"]
                .map(String::from)
                .to_vec(),
        });
    }
    if wants("weights") {
        let mut l = Layout::create(&w.join("weights-layout"));
        let d = l.image(&[base.clone(), weights_layer()], "amd64");
        l.tag("t", d);
        publish(root, registry, &format!("{}:t", l.dir.display()), "suite/weights", w);
        workloads.push(Builtin {
            name: "weights",
            repo: "suite/weights".into(),
            cmd: vec!["sh".into(), "-c".into(), "cat /models/weights.bin > /dev/null".into()],
        });
    }
    workloads
}

/// scripts/build-image.sh [variant]: the OCI layout reference it prints.
fn build_image(root: &str, variant: Option<&str>) -> String {
    let out = run(Command::new("bash")
        .arg(format!("{root}/scripts/build-image.sh"))
        .args(variant));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A layer holding `models/weights.bin`: 128 MiB of pseudo-random bytes with some redundancy.
fn weights_layer() -> Layer {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let weights: Vec<u8> = (0..128u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 61) as u8 // some redundancy, as float weights have
        })
        .collect();
    let tar = crate::support::layout::tar_bytes(&[
        Entry::Dir("models", 0o755),
        Entry::File("models/weights.bin", 0o644, &weights),
    ]);
    drop(weights);
    Layer::gzip_tar(&tar)
}

/// Push `layout:tag` as `repo:gzip` and its zstd:chunked conversion as `repo:zc`.
fn publish(root: &str, registry: &TestRegistry, layout: &str, repo: &str, work: &Path) {
    let src = format!("{}/{repo}:gzip", registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker://{src}")));
    run(lamina(root)
        .args(["convert", &src, &format!("{}/{repo}:zc", registry.addr)])
        .env("LAMINA_CACHE_DIR", work.join("convert-cache")));
}

/// The digest of the converted image manifest of `repo` (for this machine's platform).
fn manifest_digest(root: &str, registry: &TestRegistry, repo: &str) -> String {
    let out = run(lamina(root).arg("inspect").arg(format!("{}/{repo}:zc", registry.addr)));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("manifest")
                .map(|r| r.trim().split(' ').next().unwrap_or("").to_string())
        })
        .filter(|d| d.starts_with("sha256:"))
        .expect("lamina inspect printed no manifest digest")
}

/// Compressed bytes of the converted image's layers.
fn layer_bytes(registry: &TestRegistry, repo: &str) -> u64 {
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}:zc", registry.addr)))
    .stdout;
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum())
        .unwrap_or(0)
}

/// The largest blob of `repo` up to `cap` bytes, as a registry path (the link check's).
fn largest_blob_path(registry: &TestRegistry, repo: &str, cap: u64) -> Option<String> {
    // The registry links a repository's layers under repositories/<repo>/_layers/sha256/<hex>
    // and stores the bytes under blobs/sha256/<ab>/<hex>/data.
    let v2 = registry.storage().join("docker/registry/v2");
    let mut best: Option<(u64, String)> = None;
    for link in std::fs::read_dir(v2.join("repositories").join(repo).join("_layers/sha256")).ok()? {
        let hex = link.ok()?.file_name().to_string_lossy().to_string();
        let size = std::fs::metadata(v2.join("blobs/sha256").join(&hex[..2]).join(&hex).join("data"))
            .ok()?
            .len();
        if best.as_ref().is_none_or(|(s, _)| size > *s) && size <= cap {
            best = Some((size, hex));
        }
    }
    best.map(|(_, hex)| format!("/v2/{repo}/blobs/sha256:{hex}"))
}
