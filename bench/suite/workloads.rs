//! The workloads: images built from Debian packages (scripts/build-image.sh), pushed to the
//! registry as made (`gzip`) and converted (`zc`), with the command each one starts; and the
//! extracted trees `local` runs in, with what the command needs from them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::common::lamina;
use crate::support::layout::{Entry, Layer, Layout};
use crate::support::registry::TestRegistry;
use crate::support::run;

pub struct Workload {
    pub name: &'static str,
    /// Image built in the registry: `gzip` (as made) and `zc` (converted) tags.
    pub repo: String,
    pub cmd: Vec<String>,
}

/// Per workload: bytes of the files its command opens, and the converted image's compression
/// ratio (layer blob bytes ÷ tree bytes).
pub type Needed = BTreeMap<&'static str, (u64, f64)>;

/// Build and publish the `wanted` workloads, in the order distro, python, app, weights.
/// Images: the Debian image of scripts/build-image.sh (its base layer alone is the distro
/// image), its `app` variant, and a large-file image (distro + a 128 MiB "weights" file);
/// `tree` reads every file of the python image.
pub fn publish_all(root: &str, registry: &TestRegistry, w: &Path, wanted: &[String]) -> Vec<Workload> {
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
        workloads.push(Workload {
            name: "distro",
            repo: "suite/distro".into(),
            cmd: vec!["sh".into(), "-c".into(), "true".into()],
        });
    }
    if wants("python") {
        publish(root, registry, &python_layout, "suite/python", w);
        workloads.push(Workload {
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
        workloads.push(Workload {
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
        workloads.push(Workload {
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
        workloads.push(Workload {
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

/// Extract each workload's converted image to `w/local-<name>` (for `local`), and measure what
/// its command needs (for the lazy floor).
pub fn local_trees(root: &str, registry: &TestRegistry, w: &Path, workloads: &[Workload]) -> Needed {
    let mut needed = Needed::new();
    for wl in workloads {
        let tree = w.join(format!("local-{}", wl.name));
        run(lamina(root)
            .arg("pull")
            .arg(format!("{}/{}:zc", registry.addr, wl.repo))
            .arg(&tree));
        let opened = opened_bytes(&tree, &wl.cmd, w);
        // Compression ratio of the converted image: layer blob bytes ÷ tree bytes.
        let du = String::from_utf8_lossy(&run(Command::new("du").args(["-sb"]).arg(&tree)).stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(1.0);
        let raw = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{}:zc", registry.addr, wl.repo)))
        .stdout;
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let compressed: f64 = manifest["layers"]
            .as_array()
            .map(|ls| ls.iter().filter_map(|l| l["size"].as_f64()).sum())
            .unwrap_or(du);
        needed.insert(wl.name, (opened, compressed / du));
    }
    needed
}

/// Files the command opens (strace on the extracted tree): total bytes.
fn opened_bytes(tree: &Path, cmd: &[String], work: &Path) -> u64 {
    let trace = work.join("trace");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", "trace=openat,execve", "-o"])
        .arg(&trace)
        .arg("/usr/sbin/chroot")
        .arg(tree)
        .args(cmd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = c.status();
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines() {
        if l.contains("= -1") || l.contains("O_DIRECTORY") {
            continue;
        }
        if let Some(p) = l.split('"').nth(1) {
            if p.starts_with('/') {
                seen.insert(p.to_string());
            }
        }
    }
    seen.iter()
        .filter_map(|p| std::fs::metadata(tree.join(p.trim_start_matches('/'))).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
