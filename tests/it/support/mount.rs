//! Lazy mounts for tests: a mount unmounted when dropped, the shared image fixture (the
//! standard image pushed, converted and unpacked by umoci as the oracle), `lamina stats`
//! polled for a state, and a Debian python3 copied into images.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::layers::{build_image, push_and_convert, MOUNT_LAYERS};
use super::registry::TestRegistry;
use super::{assert_ok, in_ci, lamina, poll, require_root, require_tools, run};

/// A mount that is unmounted when dropped (also if the test fails).
pub struct Mounted {
    /// The mount point.
    pub point: PathBuf,
    /// The daemon's pid.
    pub pid: u32,
}

impl Mounted {
    /// `lamina mount EXTRA… IMAGE POINT` with the cache `cache`.
    pub fn new(image: &str, point: &Path, cache: &Path, extra: &[&str]) -> Mounted {
        let out = mount_command(image, point, cache, extra).output().unwrap();
        assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .split("daemon pid ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {text}"));
        Mounted {
            point: point.to_path_buf(),
            pid,
        }
    }

    /// `lamina umount`.
    pub fn unmount(&self) {
        let _ = lamina().arg("umount").arg(&self.point).output();
    }

    /// Whether the daemon still runs (a zombie does not).
    pub fn daemon_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// Wait until the daemon has exited (after an unmount or a kill).
    pub fn wait_daemon_gone(&self, why: &str) {
        poll::until(&format!("the daemon to exit {why}"), || {
            (!self.daemon_alive()).then_some(())
        });
    }

    /// `lamina stats` (`args`, e.g. `--json`), polled until `until` holds of its output (the
    /// daemon rewrites its state file twice a second); the output that satisfied it.
    pub fn stats_until(&self, cache: &Path, args: &[&str], mut until: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        let found = poll::within(poll::DEADLINE, || {
            let out = lamina()
                .arg("stats")
                .args(args)
                .arg(&self.point)
                .env("LAMINA_CACHE_DIR", cache)
                .output()
                .unwrap();
            assert_ok(&out);
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            until(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("`lamina stats` never showed the expected state; last:\n{last}"))
    }
}

/// `lamina mount EXTRA… IMAGE POINT` with the cache `cache` (the mount point made first).
pub fn mount_command(image: &str, point: &Path, cache: &Path, extra: &[&str]) -> std::process::Command {
    std::fs::create_dir_all(point).unwrap();
    let mut cmd = lamina();
    cmd.arg("mount")
        .args(extra)
        .arg(image)
        .arg(point)
        .env("LAMINA_CACHE_DIR", cache);
    cmd
}

/// `lamina cache gc --max-bytes 0` on `cache` (every chunk it may evict goes); its output.
pub fn evict_all(cache: &Path) -> std::process::Output {
    crate::support::run(
        lamina()
            .args(["cache", "gc", "--max-bytes", "0"])
            .env("LAMINA_CACHE_DIR", cache),
    )
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Whether /dev/fuse is here; missing: fail under CI, otherwise print why and return false.
pub fn require_fuse() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    if in_ci() {
        panic!("/dev/fuse is missing; CI=true makes this a failure");
    }
    eprintln!("SKIPPED: /dev/fuse is missing");
    false
}

/// The manifest of a pushed image, as the registry serves it (skopeo, any certificate).
pub fn manifest(image: &str) -> serde_json::Value {
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout;
    serde_json::from_slice(&raw).unwrap()
}

/// The config digest of a pushed image (to leave config GETs out of blob counts).
pub fn config_digest(image: &str) -> String {
    manifest(image)["config"]["digest"].as_str().unwrap().to_string()
}

/// Layer blob GETs of `repo` (the config excluded), once the access log has settled.
pub fn blob_gets_and_bytes(registry: &TestRegistry, repo: &str, config_digest: &str) -> (usize, u64) {
    registry.settled_blob_gets(repo, Some(config_digest))
}

/// Layer blob GETs of `repo` (the config excluded), once the access log has settled.
pub fn blob_gets(registry: &TestRegistry, repo: &str, config_digest: &str) -> usize {
    blob_gets_and_bytes(registry, repo, config_digest).0
}

/// `lamina stats --json` of `m`, once its counters equal what the registry's log shows of
/// `repo` since `since` (requests, bytes): every fetch is counted, and only fetches.
pub fn stats_matching_log(
    m: &Mounted,
    cache: &Path,
    registry: &TestRegistry,
    repo: &str,
    config: &str,
    since: (usize, u64),
) -> serde_json::Value {
    let text = m.stats_until(cache, &["--json"], |t| {
        let state: serde_json::Value = serde_json::from_str(t).unwrap();
        let (requests, bytes) = registry.blob_gets_now(repo, Some(config));
        state["stats"]["requests"].as_u64() == Some((requests - since.0) as u64)
            && state["stats"]["fetched_bytes"].as_u64() == Some(bytes - since.1)
    });
    serde_json::from_str(&text).unwrap()
}

/// The two ways a writable mount is served (`lamina mount --overlay`): kernel overlayfs over
/// lamina's read-only view, and lamina's own overlay. Writable-layer tests run on both.
pub const OVERLAYS: [&str; 2] = ["kernel", "fuse"];

/// The options of the kernel overlayfs that `overlay` is held to: the options it mounts with
/// (kernel), or those it follows (lamina's own, which keeps a copied-up hard-link group one
/// inode as `index=on` does).
pub fn oracle_options(overlay: &str) -> &'static str {
    match overlay {
        "kernel" => "redirect_dir=on,index=off",
        _ => "redirect_dir=on,index=on",
    }
}

/// The standard image with its oracle, pushed (`mnt-src:t`) and converted (`mnt-zc:t`).
pub struct Fixture {
    /// The registry holding both images.
    pub registry: TestRegistry,
    /// The test's directory.
    pub work: tempfile::TempDir,
    /// The converted image's reference.
    pub converted: String,
    /// `umoci unpack` of the image.
    pub oracle: PathBuf,
    /// The OCI layout the image was built in.
    pub layout: PathBuf,
}

impl Fixture {
    /// The test's cache directory, `WORK/cache`.
    pub fn cache(&self) -> PathBuf {
        self.work.path().join("cache")
    }

    /// The converted image mounted at `WORK/name` with [`Self::cache`] and `extra` options.
    pub fn mount(&self, name: &str, extra: &[&str]) -> Mounted {
        Mounted::new(&self.converted, &self.work.path().join(name), &self.cache(), extra)
    }

    /// [`Self::mount`] writable, with `--upper UPPER` (and `extra`).
    pub fn mount_upper(&self, name: &str, upper: &Path, extra: &[&str]) -> Mounted {
        let mut args = vec!["--upper", upper.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.mount(name, &args)
    }
}

/// The shared image fixture, once the tools it needs (and `extra`), root and FUSE are here.
pub fn fixture(extra: &[&str]) -> Option<Fixture> {
    let tools = [&["docker-registry", "umoci", "skopeo", "setfattr", "mknod"][..], extra].concat();
    if !require_tools(&tools) || !require_root() || !require_fuse() {
        return None;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_image(w, &MOUNT_LAYERS);
    let src = format!("{}/mnt-src:t", registry.addr);
    let converted = format!("{}/mnt-zc:t", registry.addr);
    push_and_convert(&umoci.layout, &src, &converted, &w.join("convert-cache"));
    Some(Fixture {
        oracle: w.join("oracle/rootfs"),
        layout: umoci.layout,
        registry,
        work,
        converted,
    })
}

/// Copy a host file into `root` at the same path, following symlinks.
fn copy_in(root: &Path, host: &Path) {
    let dest = root.join(host.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(host, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", host.display()));
}

/// Whether Debian's python3 is here to be copied into images (it comes with
/// scripts/setup.sh); under CI=true its absence is a failure.
pub fn have_python() -> bool {
    if Path::new("/usr/bin/python3.11").exists() && Path::new("/usr/lib/python3.11").exists() {
        return true;
    }
    assert!(
        !in_ci(),
        "Debian's python3 (/usr/bin/python3.11) is missing; CI=true makes this a failure"
    );
    eprintln!("SKIPPED: Debian's python3 is not installed");
    false
}

/// Put the host's Debian-built python3, its shared libraries and its whole standard library
/// into `rootfs`.
pub fn add_python(rootfs: &Path) {
    let python = Path::new("/usr/bin/python3.11");
    copy_in(rootfs, python);
    let ldd = String::from_utf8_lossy(&run(Command::new("ldd").arg(python)).stdout).into_owned();
    for lib in ldd.split_whitespace().filter(|t| t.starts_with('/')) {
        copy_in(rootfs, Path::new(lib));
    }
    std::os::unix::fs::symlink("python3.11", rootfs.join("usr/bin/python3")).unwrap();
    std::fs::create_dir_all(rootfs.join("usr/lib/x86_64-linux-gnu")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/python3.11")
        .arg(rootfs.join("usr/lib/")));
}
