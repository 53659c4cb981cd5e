//! Mirrors from hosts.toml: a pull-through cache (docker-registry with `proxy.remoteurl`) in
//! front of the upstream serves lamina's reads, so the upstream sees only the cache; a mirror
//! that dies in the middle of a read, or flips bytes, is bypassed and the reads complete from
//! the upstream, with the right bytes and no EIO.

use std::path::Path;

use crate::fetching::fault_proxy;
use crate::support::layers::noise;
use crate::support::mount::{fixture, Mounted};
use crate::support::registry::TestRegistry;
use crate::support::{lamina, poll};

/// `DIR/<registry>/hosts.toml` naming `mirror` (pull and resolve).
fn hosts_dir(dir: &Path, registry: &str, mirror: &str) -> std::path::PathBuf {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("hosts.toml"),
        format!("[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    dir.to_path_buf()
}

fn mount_with_hosts(image: &str, point: &Path, cache: &Path, hosts: &Path) -> Mounted {
    std::fs::create_dir_all(point).unwrap();
    let out = lamina()
        .env("LAMINA_HOSTS_DIRS", hosts)
        .args(["mount", "--prefetch", "none", "--cache-dir"])
        .arg(cache)
        .arg(image)
        .arg(point)
        .output()
        .unwrap();
    crate::support::assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    Mounted {
        point: point.to_path_buf(),
        pid,
    }
}

/// Blob GETs of `repo` sent by lamina itself (its User-Agent) in `registry`'s access log.
fn lamina_blob_gets(registry: &TestRegistry, repo: &str) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/")) && l.contains("lamina/"))
        .count()
}

#[test]
fn a_pull_through_cache_serves_reads_and_the_upstream_sees_only_the_cache() {
    let Some(f) = fixture(&[]) else { return };
    let w = f.work.path();
    let cache_registry = TestRegistry::start_pull_through(&f.registry.addr);
    let hosts = hosts_dir(&w.join("hosts.d"), &f.registry.addr, &cache_registry.addr);
    let _ = f.registry.settled_blob_gets("mnt-zc", None);
    let m = mount_with_hosts(&f.converted, &w.join("mnt"), &w.join("cache-a"), &hosts);
    assert_eq!(std::fs::read(m.point.join("usr/lib/big")).unwrap(), noise(6 << 20, 42));
    let _ = f.registry.settled_blob_gets("mnt-zc", None);
    assert_eq!(
        lamina_blob_gets(&f.registry, "mnt-zc"),
        0,
        "the upstream saw lamina's requests"
    );
    assert!(
        cache_registry
            .log()
            .lines()
            .any(|l| l.contains("/v2/mnt-zc/blobs/") && l.contains("lamina/")),
        "the cache served lamina"
    );
    let stats = m.stats_until(&w.join("cache-a"), &["--json"], |t| t.contains(&cache_registry.addr));
    assert!(stats.contains("requests_by_host"), "{stats}");
    m.unmount();
}

#[test]
fn a_mirror_that_dies_mid_read_or_flips_bytes_is_bypassed() {
    let Some(f) = fixture(&[]) else { return };
    let w = f.work.path();
    let mode = w.join("mode");
    std::fs::write(&mode, "pass").unwrap();
    let (proxy, proxy_addr) = fault_proxy(&f.registry.addr, &mode, &w.join("proxy.log"));
    let hosts = hosts_dir(&w.join("hosts.d"), &f.registry.addr, &proxy_addr);

    // 1. The mirror sends a little of the body, then dies.
    let m = mount_with_hosts(&f.converted, &w.join("mnt"), &w.join("cache-a"), &hosts);
    std::fs::write(&mode, "hold:4096").unwrap();
    let big = m.point.join("usr/lib/big");
    let reader = std::thread::spawn(move || std::fs::read(big));
    poll::until("the mirror to hold a body", || {
        std::fs::read_to_string(w.join("proxy.log"))
            .unwrap_or_default()
            .contains("FAULT hold")
            .then_some(())
    });
    drop(proxy);
    let read = reader
        .join()
        .unwrap()
        .expect("the read completes from the upstream, no EIO");
    assert_eq!(read, noise(6 << 20, 42));
    assert!(
        lamina_blob_gets(&f.registry, "mnt-zc") > 0,
        "the upstream served the rest"
    );
    m.unmount();
    m.wait_daemon_gone("after unmount");

    // 2. A mirror that flips a byte of every blob it serves: detected by digest, bypassed.
    std::fs::write(&mode, "pass").unwrap();
    let (_proxy, proxy_addr) = fault_proxy(&f.registry.addr, &mode, &w.join("proxy2.log"));
    let hosts = hosts_dir(&w.join("hosts2.d"), &f.registry.addr, &proxy_addr);
    let m = mount_with_hosts(&f.converted, &w.join("mnt2"), &w.join("cache-b"), &hosts);
    std::fs::write(&mode, "flip").unwrap();
    assert_eq!(std::fs::read(m.point.join("usr/lib/big")).unwrap(), noise(6 << 20, 42));
    assert!(
        std::fs::read_to_string(w.join("proxy2.log"))
            .unwrap()
            .contains("FAULT flip"),
        "the mirror did serve flipped bytes"
    );
    m.unmount();
}
