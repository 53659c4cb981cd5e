//! A registry restarted in the middle of a pull: the pull completes through retries and
//! resumed downloads, or fails clearly; a registry that stays down fails the pull with no tree.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::layout::{Layer, Layout};
use crate::support::registry::TestRegistry;
use crate::support::{lamina, require_tools};

/// Three uncompressed layers of 96 MiB of noise each: long enough to kill the registry mid-way.
fn big_image(layout_dir: &Path) -> (Layout, Vec<Vec<u8>>) {
    let mut layout = Layout::create(layout_dir);
    let mut contents = Vec::new();
    let layers: Vec<Layer> = (0..3u64)
        .map(|i| {
            let data = crate::support::layers::noise(96 << 20, 100 + i);
            let tar = crate::support::layout::tar_bytes(&[crate::support::layout::Entry::File(
                &format!("big{i}"),
                0o644,
                &data,
            )]);
            contents.push(data);
            Layer::plain(tar)
        })
        .collect();
    let desc = layout.image(&layers, "amd64");
    layout.tag("t", desc);
    (layout, contents)
}

fn spawn_pull(image: &str, dest: &Path) -> Child {
    lamina()
        .arg("pull")
        .arg(image)
        .arg(dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until some layer download has started writing its spool file.
fn wait_for_download_start(parent: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = std::fs::read_dir(parent).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".blobs")
                && std::fs::read_dir(e.path())
                    .map(|d| d.flatten().any(|f| f.metadata().map(|m| m.len() > 0).unwrap_or(false)))
                    .unwrap_or(false)
        });
        if started {
            return;
        }
        assert!(Instant::now() < deadline, "the pull never started downloading");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn registry_restart_mid_pull_never_yields_a_corrupt_tree() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let mut registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (layout, contents) = big_image(&w.join("layout"));
    let image = format!("{}/big:t", registry.addr);
    crate::support::image::skopeo_push(&layout.dir, "t", &image, None, false);
    std::fs::remove_dir_all(&layout.dir).unwrap();

    // Restarted: the pull resumes and completes, or fails with a clear error and no tree.
    let pulls = w.join("pulls");
    std::fs::create_dir(&pulls).unwrap();
    let child = spawn_pull(&image, &pulls.join("out"));
    wait_for_download_start(&pulls);
    registry.kill();
    std::thread::sleep(Duration::from_millis(300));
    registry.restart();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        for (i, data) in contents.iter().enumerate() {
            let got = std::fs::read(pulls.join(format!("out/big{i}"))).unwrap();
            assert!(got == *data, "big{i} differs after a resumed pull");
        }
        eprintln!("pull completed through the restart");
    } else {
        assert!(!pulls.join("out").exists(), "failed pull left a tree");
        assert!(stderr.contains(&registry.addr), "unclear error: {stderr}");
        eprintln!("pull failed cleanly through the restart: {stderr}");
    }

    // Down for good: the pull fails with the URL in the message, and leaves nothing behind.
    let child = spawn_pull(&image, &pulls.join("dead"));
    wait_for_download_start(&pulls);
    registry.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pull from a dead registry succeeded");
    assert!(stderr.contains(&registry.addr), "unclear error: {stderr}");
    assert!(!pulls.join("dead").exists());
    let leftovers: Vec<_> = crate::support::dir_names(&pulls)
        .into_iter()
        .filter(|n| n != "out")
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}
