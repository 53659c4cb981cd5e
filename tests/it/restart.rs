//! The server going away in the middle of a pull. Restarted: every layer download that broke
//! resumes with a `Range` request from the byte it had written, and the pull completes with the
//! right bytes. Down for good: the pull fails naming the server, with no tree and no staging.
//!
//! A fault proxy (`support/fault_proxy.py`, mode `hold:N`) sits between lamina and the real
//! registry, so that every layer body breaks at exactly byte N when both are killed, and logs
//! the `Range` header of every blob GET.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::layout::{tar_bytes, Entry, Layer, Layout};
use crate::support::registry::TestRegistry;
use crate::support::{lamina, poll, require_tools, restart_helper, run, start_helper};

/// Where every layer body breaks: the proxy sends this many bytes, then holds the rest.
const HELD: u64 = 8 << 20;

/// One layer of the test image as pushed: digest and size of its blob, and the file it holds.
struct BigLayer {
    digest: String,
    size: u64,
    data: Vec<u8>,
}

/// Three layers of 32 MiB of noise each, pushed as `ADDR/big:t` (skopeo compresses them on the
/// way, so digests and sizes are read back from the pushed manifest).
fn push_big_image(w: &Path, addr: &str) -> Vec<BigLayer> {
    let mut layout = Layout::create(&w.join("layout"));
    let files: Vec<Vec<u8>> = (0..3u64)
        .map(|i| crate::support::layers::noise(32 << 20, 100 + i))
        .collect();
    let layers: Vec<Layer> = files
        .iter()
        .enumerate()
        .map(|(i, data)| Layer::plain(tar_bytes(&[Entry::File(&format!("big{i}"), 0o644, data)])))
        .collect();
    let desc = layout.image(&layers, "amd64");
    layout.tag("t", desc);
    let image = format!("{addr}/big:t");
    crate::support::image::skopeo_push(&layout.dir, "t", &image, None, false);
    std::fs::remove_dir_all(&layout.dir).unwrap();
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .stdout;
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let pushed = manifest["layers"].as_array().unwrap();
    assert_eq!(pushed.len(), files.len());
    pushed
        .iter()
        .zip(files)
        .map(|(l, data)| BigLayer {
            digest: l["digest"].as_str().unwrap().to_string(),
            size: l["size"].as_u64().unwrap(),
            data,
        })
        .collect()
}

fn spawn_pull(image: &str, dest: &Path) -> Child {
    lamina()
        .args(["pull", "--parallel", "3"])
        .arg(image)
        .arg(dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The lengths of the download files of pulls under `parent` (in `.TAG.blobs/`).
fn spool_lengths(parent: &Path) -> Vec<u64> {
    let mut lengths = Vec::new();
    for e in std::fs::read_dir(parent).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".blobs") {
            for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                lengths.extend(f.metadata().map(|m| m.len()));
            }
        }
    }
    lengths
}

/// Wait until the proxy holds every layer body at [`HELD`] and lamina has written all of those
/// bytes to its download files.
fn wait_until_all_held(parent: &Path, proxy_log: &Path, layers: &[BigLayer]) {
    let mut seen = (String::new(), Vec::new());
    let all = poll::within(poll::DEADLINE, || {
        let log = std::fs::read_to_string(proxy_log).unwrap_or_default();
        let held = layers
            .iter()
            .filter(|l| log.contains(&format!("HOLD /v2/big/blobs/{} at {HELD} of", l.digest)))
            .count();
        let lengths = spool_lengths(parent);
        let written = lengths.iter().filter(|n| **n == HELD).count();
        seen = (log, lengths);
        (held == layers.len() && written == layers.len()).then_some(())
    });
    assert!(
        all.is_some(),
        "the downloads never all reached byte {HELD}: files {:?}, proxy log:\n{}",
        seen.1,
        seen.0
    );
}

/// The `range=` values of the blob GETs of `digest` in a proxy log.
fn ranges_asked(proxy_log: &Path, digest: &str) -> Vec<String> {
    let prefix = format!("GET /v2/big/blobs/{digest} range=");
    std::fs::read_to_string(proxy_log)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

#[test]
fn a_pull_resumes_from_the_byte_reached_after_a_restart_and_fails_cleanly_if_never_back() {
    if !require_tools(&["docker-registry", "skopeo", "python3"]) {
        return;
    }
    let mut registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let layers = push_big_image(w, &registry.addr);
    let direct = format!("{}/big:t", registry.addr);
    let mode = w.join("mode");
    let upstream = registry.addr.clone();
    let proxy_args = [upstream.as_str(), mode.to_str().unwrap()];
    let pulls = w.join("pulls");
    std::fs::create_dir(&pulls).unwrap();

    // Every body breaks at byte HELD: the registry and the proxy are killed while holding.
    std::fs::write(&mode, format!("hold:{HELD}")).unwrap();
    let log1 = w.join("proxy1.log");
    let (proxy, proxy_addr) = start_helper("fault_proxy.py", &proxy_args, &log1);
    let port: u16 = proxy_addr.rsplit(':').next().unwrap().parse().unwrap();
    let image = direct.replace(&registry.addr, &proxy_addr);
    let child = spawn_pull(&image, &pulls.join("out"));
    wait_until_all_held(&pulls, &log1, &layers);
    registry.kill();
    drop(proxy);

    // Both back, passing everything: each download resumes from byte HELD, nothing else.
    registry.restart();
    std::fs::write(&mode, "pass").unwrap();
    let log2 = w.join("proxy2.log");
    let proxy = restart_helper("fault_proxy.py", port, &proxy_args, &log2);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the pull did not complete through the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry_log = registry.log();
    for (i, l) in layers.iter().enumerate() {
        let asked = ranges_asked(&log2, &l.digest);
        assert!(
            !asked.is_empty() && asked.iter().all(|r| *r == format!("bytes={HELD}-")),
            "layer {i} ({}): after the restart lamina asked for {asked:?}, not only bytes={HELD}-\n\
             proxy log before:\n{}\nproxy log after:\n{}\nlamina:\n{}",
            l.digest,
            std::fs::read_to_string(&log1).unwrap(),
            std::fs::read_to_string(&log2).unwrap(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The registry answered the resumption with the rest of the blob, and only that.
        let answered = format!("\"GET /v2/big/blobs/{} HTTP/1.1\" 206 {} ", l.digest, l.size - HELD);
        assert!(
            registry_log.contains(&answered),
            "layer {i}: no `{answered}` in the registry's log:\n{registry_log}"
        );
        let got = std::fs::read(pulls.join(format!("out/big{i}"))).unwrap();
        assert!(got == l.data, "big{i} differs after a resumed pull");
    }

    // Down for good: the pull fails naming the server, and leaves nothing behind.
    std::fs::write(&mode, format!("hold:{HELD}")).unwrap();
    drop(proxy);
    let log3 = w.join("proxy3.log");
    let proxy = restart_helper("fault_proxy.py", port, &proxy_args, &log3);
    let child = spawn_pull(&image, &pulls.join("dead"));
    wait_until_all_held(&pulls, &log3, &layers);
    registry.kill();
    drop(proxy);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pull from a dead registry succeeded");
    // The error itself (not the warnings logged while resuming) names the server.
    let error: Vec<&str> = stderr.lines().filter(|l| !l.contains("lamina::")).collect();
    assert!(
        error.iter().any(|l| l.contains(&proxy_addr)),
        "unclear error: {error:?}\n{stderr}"
    );
    assert!(!pulls.join("dead").exists());
    let leftovers: Vec<PathBuf> = crate::support::dir_names(&pulls)
        .into_iter()
        .filter(|n| n != "out")
        .map(PathBuf::from)
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}
