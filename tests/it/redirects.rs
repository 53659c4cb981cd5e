//! Blob GETs redirected (307) to another origin, as registries send them to object storage
//! or a CDN: lazy reads work, registry credentials never go to the other origin, and later
//! Range requests of a blob go straight to the URL it was redirected to.

use crate::support::layers::noise;
use crate::support::mount::{fixture, Mounted};
use crate::support::{lamina, poll, require_tools, start_helper};

#[test]
fn redirected_blob_reads_work_without_credentials_and_reuse_the_redirect() {
    let Some(f) = fixture(&[]) else { return };
    if !require_tools(&["python3"]) {
        return;
    }
    let w = f.work.path();
    let storage = f.registry.storage();
    let log = w.join("redirect.log");
    let (_proxy, addr) = start_helper(
        "redirect_proxy.py",
        &[&f.registry.addr, storage.to_str().unwrap()],
        &log,
    );
    // Credentials for the front (it asks for them); the object origin must never see them.
    let docker = w.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!("{{\"auths\": {{\"{addr}\": {{\"username\": \"u\", \"password\": \"secret\"}}}}}}"),
    )
    .unwrap();
    let image = f.converted.replace(&f.registry.addr, &addr);
    let point = w.join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let out = lamina()
        .env("DOCKER_CONFIG", &docker)
        .args(["mount", "--prefetch", "none", "--cache-dir"])
        .arg(w.join("cache"))
        .arg(&image)
        .arg(&point)
        .output()
        .unwrap();
    crate::support::assert_ok(&out);
    let pid = String::from_utf8_lossy(&out.stdout)
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    let m = Mounted { point, pid };
    assert_eq!(std::fs::read(m.point.join("usr/lib/big")).unwrap(), noise(6 << 20, 42));
    let text = poll::until("the proxy to log the object reads", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("OBJECT").then_some(t)
    });
    let objects: Vec<&str> = text.lines().filter(|l| l.starts_with("OBJECT")).collect();
    let redirects = text.lines().filter(|l| l.starts_with("REDIRECT")).count();
    assert!(
        objects.iter().all(|l| l.ends_with("auth=no")),
        "credentials reached the object origin:\n{text}"
    );
    assert!(
        objects.iter().any(|l| !l.contains("range=-")),
        "lazy reads are Range requests to the object origin:\n{text}"
    );
    // A blob is redirected once (twice if its first requests race); its later Range requests
    // go straight to the object URL, so there are more object requests than redirects.
    let blobs: std::collections::HashSet<&str> = objects
        .iter()
        .filter_map(|l| l.split("/objects/").nth(1)?.split('?').next())
        .collect();
    assert!(
        redirects <= 2 * blobs.len() && objects.len() > redirects,
        "{redirects} redirects for {} blobs and {} object requests:\n{text}",
        blobs.len(),
        objects.len()
    );
    m.unmount();
}
