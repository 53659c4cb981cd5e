//! `lamina pull` of a many-layer umoci-built image equals `umoci unpack` of the same image.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::support::image::{skopeo_push, Umoci};
use crate::support::layout::{tar_bytes, Entry};
use crate::support::registry::TestRegistry;
use crate::support::tree::assert_same_tree;
use crate::support::{assert_ok, lamina_pull, require_root, require_tools, run};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(root: &Path, rel: &str, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Layer 1: a base tree with every kind of entry umoci emits.
pub fn base_layer(r: &Path) {
    write(r, "etc/remove-me", b"bye\n");
    write(r, "etc/chmod-me", b"mode\n");
    write(r, "etc/thing", b"a file that becomes a directory\n");
    write(r, "usr/bin/tool", &noise(300_000, 1));
    chmod(r, "usr/bin/tool", 0o755);
    write(r, "usr/bin/suid", b"#!/bin/sh\n");
    chmod(r, "usr/bin/suid", 0o4755);
    write(r, "usr/lib/libx.so.1", &noise(1 << 20, 2));
    symlink("libx.so.1", r.join("usr/lib/libx.so")).unwrap();
    symlink("/etc", r.join("usr/sym-to-file")).unwrap();
    write(r, "var/data/a", b"a");
    write(r, "var/data/b/c", b"c");
    write(r, "opt/replace/a", b"old a");
    write(r, "opt/replace/b", b"old b");
    write(r, "opt/opq/old1", b"hidden by the opaque layer");
    write(r, "opt/opq/sub/old2", b"hidden too");
    write(r, "usr/share/dir-to-file/x", b"x");
    write(r, "usr/share/na\u{ef}ve file.txt", b"unicode and spaces");
    write(r, "usr/share/empty", b"");
    std::fs::create_dir_all(r.join("home/user")).unwrap();
    chown(r, "home/user", 1000, 1000);
    std::fs::create_dir_all(r.join("tmp")).unwrap();
    chmod(r, "tmp", 0o1777);
    std::fs::create_dir_all(r.join("srv/shared")).unwrap();
    chmod(r, "srv/shared", 0o2775);
    chown(r, "srv/shared", 0, 50);
    run(std::process::Command::new("mknod")
        .arg(r.join("etc/null-ish"))
        .args(["c", "1", "3"]));
    run(std::process::Command::new("mkfifo").arg(r.join("etc/pipe")));
}

/// Layer 2: deletions, replaced contents, chmod, chown, hard links, symlinks, an xattr.
pub fn changes_layer(r: &Path) {
    std::fs::remove_file(r.join("etc/remove-me")).unwrap();
    std::fs::remove_dir_all(r.join("var/data")).unwrap();
    std::fs::remove_file(r.join("opt/replace/a")).unwrap();
    std::fs::remove_file(r.join("opt/replace/b")).unwrap();
    write(r, "opt/replace/c", b"new c");
    chmod(r, "etc/chmod-me", 0o640);
    chown(r, "usr/lib/libx.so.1", 1234, 5678);
    std::fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool-hardlink")).unwrap();
    std::fs::hard_link(r.join("usr/bin/tool"), r.join("usr/lib/tool-elsewhere")).unwrap();
    symlink("tool", r.join("usr/bin/tool-sym")).unwrap();
    write(r, "home/user/notes", b"owned by a user\n");
    chown(r, "home/user/notes", 1000, 1000);
    run(std::process::Command::new("setfattr")
        .args(["-n", "user.lamina.test", "-v", "hello"])
        .arg(r.join("etc/chmod-me")));
}

/// Layer 3: file↔directory and symlink→file replacements, new content, a directory xattr.
pub fn replacements_layer(r: &Path) {
    std::fs::remove_file(r.join("etc/thing")).unwrap();
    write(r, "etc/thing/inside", b"now a directory\n");
    std::fs::remove_dir_all(r.join("usr/share/dir-to-file")).unwrap();
    write(r, "usr/share/dir-to-file", b"now a file\n");
    std::fs::remove_file(r.join("usr/sym-to-file")).unwrap();
    write(r, "usr/sym-to-file", b"no longer a symlink\n");
    write(r, "usr/lib/libx.so.2", &noise(70_000, 3));
    run(std::process::Command::new("setfattr")
        .args(["-n", "user.dir.note", "-v", "on a directory"])
        .arg(r.join("opt/replace")));
}

/// Layer 4, by hand (umoci never writes opaque markers): an opaque directory and devices.
pub fn opaque_layer_tar() -> Vec<u8> {
    tar_bytes(&[
        Entry::Dir("opt/", 0o755),
        Entry::Dir("opt/opq/", 0o750),
        Entry::File("opt/opq/.wh..wh..opq", 0o644, b""),
        Entry::File("opt/opq/new", 0o644, b"the only child left"),
        Entry::Dir("dev/", 0o755),
        Entry::Char("dev/zero-ish", 1, 5),
        Entry::Block("dev/loop-ish", 7, 0),
        Entry::Fifo("dev/fifo"),
        Entry::File("etc/.wh.pipe", 0o644, b""),
    ])
}

#[test]
fn pull_of_umoci_image_matches_umoci_unpack() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "setfattr", "mknod"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = Umoci::init(&w.join("layout"), "t");
    let bundle = w.join("bundle");
    umoci.unpack("t", &bundle);
    let rootfs = bundle.join("rootfs");
    base_layer(&rootfs);
    umoci.repack("t", &bundle);
    changes_layer(&rootfs);
    umoci.repack("t", &bundle);
    replacements_layer(&rootfs);
    umoci.repack("t", &bundle);
    std::fs::write(w.join("opaque.tar"), opaque_layer_tar()).unwrap();
    umoci.add_layer("t", &w.join("opaque.tar"));

    let image = format!("{}/full:t", registry.addr);
    skopeo_push(&umoci.layout, "t", &image, None, false);
    umoci.unpack("t", &w.join("oracle"));

    let out = lamina_pull(&image, &w.join("out"), &[]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 layers"), "{stdout}");
    assert_same_tree(&w.join("out"), &w.join("oracle/rootfs"));

    // The oracle agreeing is the proof; these name what it proves, so a regression in the
    // oracle itself cannot hide one here.
    let o = w.join("out");
    assert!(!o.join("etc/remove-me").exists() && !o.join("var/data").exists() && !o.join("etc/pipe").exists());
    assert_eq!(crate::support::dir_names(&o.join("opt/opq")), ["new"]);
    assert_eq!(crate::support::dir_names(&o.join("opt/replace")), ["c"]);
    assert!(o.join("etc/thing/inside").is_file() && o.join("usr/share/dir-to-file").is_file());
}
