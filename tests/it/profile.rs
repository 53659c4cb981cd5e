//! Access profiles: a profile recorded by one cache and pushed to the real registry (no
//! referrers API in distribution 2.8: the tag-schema fallback) is found by a mount with an
//! empty cache, which prefetches it — every byte python then needs is there with the registry
//! gone; a corrupt or oversized cached profile is ignored; a demand read whose chunks a
//! stalled prefetch holds still gets its answer (EIO) at its deadline, and its bytes once the
//! registry answers again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fetching::{fault_proxy, python_and_more};
use crate::support::layers::{build_layout, push_and_convert, Step};
use crate::support::mount::{evict_all, have_python, require_fuse, Mounted};
use crate::support::registry::TestRegistry;
use crate::support::{lamina, require_root, require_tools, run};

const IMPORTS: &str = "import json, email.parser, http.client; print(json.dumps({'ok': True}))";

pub(crate) struct PythonImage {
    pub registry: TestRegistry,
    pub work: tempfile::TempDir,
    pub image: String,
}

pub(crate) fn python_image() -> Option<PythonImage> {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "ldd", "cp"]) || !require_root() || !require_fuse() {
        return None;
    }
    if !have_python() {
        return None;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_layout(w, &[Step::Repack(python_and_more)]);
    let src = format!("{}/python:t", registry.addr);
    let image = format!("{}/python:zc", registry.addr);
    push_and_convert(&umoci.layout, &src, &image, &w.join("convert-cache"));
    Some(PythonImage { registry, work, image })
}

pub(crate) fn python_in(point: &Path) -> std::process::Output {
    Command::new("chroot")
        .arg(point)
        .args(["/usr/bin/python3", "-c", IMPORTS])
        .output()
        .unwrap()
}

/// `lamina stats --json` once `until` holds of it.
fn stats_json(m: &Mounted, cache: &Path, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let text = m.stats_until(cache, &["--json"], |t| {
        serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| until(&v))
    });
    serde_json::from_str(&text).unwrap()
}

/// Mount with `cache`, run python, unmount, wait for the daemon: the cache then holds the
/// image's profile.
pub(crate) fn record(p: &PythonImage, cache: &Path, name: &str) {
    let m = Mounted::new(&p.image, &p.work.path().join(name), cache, &["--prefetch", "none"]);
    let out = python_in(&m.point);
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    m.unmount();
    m.wait_daemon_gone("after recording a profile");
}

#[test]
fn a_pushed_profile_is_found_by_an_empty_cache_and_prefetched() {
    let Some(mut p) = python_image() else {
        return;
    };
    let w = p.work.path().to_path_buf();
    let recorder = w.join("recorder-cache");
    record(&p, &recorder, "mnt-record");
    let ls = run(lamina().args(["profile", "ls"]).env("LAMINA_CACHE_DIR", &recorder));
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    assert!(ls.contains(" 1 runs") && !ls.contains(" 0 files"), "profile ls: {ls}");

    let pushed = run(lamina()
        .args(["profile", "push"])
        .arg(&p.image)
        .env("LAMINA_CACHE_DIR", &recorder));
    let pushed = String::from_utf8_lossy(&pushed.stdout).to_string();
    assert!(pushed.contains("listed under the tag sha256-"), "push: {pushed}");

    // Another machine: an empty cache finds the profile in the registry.
    let fresh = w.join("fresh-cache");
    let shown = run(lamina()
        .args(["profile", "show"])
        .arg(&p.image)
        .env("LAMINA_CACHE_DIR", &fresh));
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(shown.contains("usr/bin/python3"), "profile show: {shown}");
    assert!(!fresh.join("profiles").exists() || std::fs::read_dir(fresh.join("profiles")).unwrap().count() == 0);

    let m = Mounted::new(&p.image, &w.join("mnt"), &fresh, &[]);
    let s = stats_json(&m, &fresh, |v| {
        v["stats"]["prefetched_bytes"].as_u64().unwrap_or(0) > 0 && v["stats"]["prefetch_pending_chunks"] == 0
    });
    let prefetched = s["stats"]["prefetched_bytes"].as_u64().unwrap();
    // Everything python needs came with the profile: it starts with the registry gone.
    p.registry.kill();
    let out = python_in(&m.point);
    if !out.status.success() {
        let s = stats_json(&m, &fresh, |_| true);
        eprintln!("STATS {}", s["stats"]);
        for e in std::fs::read_dir(fresh.join("logs")).unwrap() {
            eprintln!("LOG {}", std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
    }
    assert!(
        out.status.success(),
        "python without the registry: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"ok": true}"#);
    let s = stats_json(&m, &fresh, |v| {
        v["stats"]["prefetch_used_bytes"].as_u64().unwrap_or(0) > 0
    });
    let used = s["stats"]["prefetch_used_bytes"].as_u64().unwrap();
    eprintln!("profile prefetch: {prefetched} bytes, {used} used by python");
    assert!(used <= prefetched);
    assert_eq!(s["stats"]["profile_stopped"], false, "python follows its own profile");
    assert!(
        s["stats"]["profile_chunks"].as_u64().unwrap() > 0,
        "the profile was used"
    );
}

#[test]
fn a_workload_that_strays_from_the_profile_stops_its_prefetch() {
    let Some(p) = python_image() else {
        return;
    };
    let w = p.work.path().to_path_buf();
    let recorder = w.join("recorder-cache");
    record(&p, &recorder, "mnt-record");
    // Another cache with only the profile: reading the whole tree is not what was recorded.
    let fresh = w.join("fresh-cache");
    std::fs::create_dir_all(fresh.join("profiles")).unwrap();
    for e in std::fs::read_dir(recorder.join("profiles")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), fresh.join("profiles").join(e.file_name())).unwrap();
    }
    let m = Mounted::new(&p.image, &w.join("mnt"), &fresh, &[]);
    let mut tar = Command::new("tar")
        .args(["-cf", "-", "-C"])
        .arg(&m.point)
        .arg("usr/lib")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::copy(&mut tar.stdout.take().unwrap(), &mut std::io::sink()).unwrap();
    assert!(tar.wait().unwrap().success());
    let s = stats_json(&m, &fresh, |v| v["stats"].is_object());
    assert_eq!(s["stats"]["profile_stopped"], true, "stats: {}", s["stats"]);
}

#[test]
fn corrupt_or_oversized_cached_profiles_are_ignored() {
    let Some(p) = python_image() else {
        return;
    };
    let w = p.work.path().to_path_buf();
    let cache = w.join("cache");
    record(&p, &cache, "mnt-record");
    let profiles: Vec<_> = std::fs::read_dir(cache.join("profiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(profiles.len(), 1, "one profile recorded: {profiles:?}");
    let good = std::fs::read(&profiles[0]).unwrap();
    let oversized = {
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["padding"] = "x".repeat(17 << 20).into();
        serde_json::to_vec(&v).unwrap()
    };
    for (what, bytes) in [
        ("garbage", b"\x00not json {".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("oversized", oversized),
    ] {
        std::fs::write(&profiles[0], &bytes).unwrap();
        let m = Mounted::new(&p.image, &w.join(format!("mnt-{what}")), &cache, &[]);
        let out = python_in(&m.point);
        assert!(
            out.status.success(),
            "{what}: python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Read-ahead may prefetch too: the profile's own count says whether one was used.
        let s = stats_json(&m, &cache, |v| v["stats"].is_object());
        assert_eq!(s["stats"]["profile_chunks"], 0, "{what}: a bad profile was used");
        m.unmount();
        m.wait_daemon_gone(what);
    }
}

#[test]
fn a_stalled_prefetch_never_holds_a_demand_read_past_its_deadline() {
    let Some(p) = python_image() else {
        return;
    };
    let w = p.work.path().to_path_buf();
    let cache = w.join("cache");
    // A profile and the layer indexes in the cache; then no chunk left.
    record(&p, &cache, "mnt-record");
    evict_all(&cache);
    let mode = w.join("fault-mode");
    std::fs::write(&mode, "stall").unwrap();
    let (_proxy, proxy_addr) = fault_proxy(&p.registry.addr, &mode, &w.join("proxy.log"));
    let image = p.image.replace(&p.registry.addr, &proxy_addr);
    let m = Mounted::new(&image, &w.join("mnt"), &cache, &["--fetch-timeout", "3"]);
    // Prefetch has started and stalls on the blob requests.
    let log = || std::fs::read_to_string(w.join("proxy.log")).unwrap_or_default();
    crate::support::poll::until("a prefetch request to stall", || {
        log().contains("FAULT stall").then_some(())
    });
    let started = Instant::now();
    let err = std::fs::read(m.point.join("usr/bin/python3")).expect_err("read through a stalled registry");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert!(took < Duration::from_secs(20), "EIO took {took:?} with a 3 s deadline");
    assert!(m.daemon_alive());
    // The stall over, the same read gets the right bytes.
    std::fs::write(&mode, "pass").unwrap();
    let want = std::fs::read("/usr/bin/python3").unwrap();
    let got = crate::support::poll::within(Duration::from_secs(30), || {
        std::fs::read(m.point.join("usr/bin/python3")).ok()
    })
    .expect("python3 read back once the registry answers");
    assert!(got == want, "python3 differs from the host's");
}
