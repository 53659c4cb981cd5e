//! The standard test image: layers with every kind of entry and change umoci emits (plus an
//! opaque directory and devices by hand), built into an OCI layout by umoci, and the
//! one-shot set-ups shared by several test files.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::image::{skopeo_push, Umoci};
use super::layout::{tar_bytes, Entry};
use super::{assert_ok, lamina, run};

/// One layer of a test image built with umoci.
#[derive(Clone, Copy)]
pub enum Step {
    /// Change the bundle's rootfs, then `umoci repack`.
    Repack(fn(&Path)),
    /// Append this tar verbatim (`umoci raw add-layer`).
    Tar(fn() -> Vec<u8>),
}

/// The layers of `lamina pull`'s comparison with umoci: base, changes, replacements, opaque.
pub const PULL_LAYERS: [Step; 4] = [
    Step::Repack(base_layer),
    Step::Repack(changes_layer),
    Step::Repack(replacements_layer),
    Step::Tar(opaque_layer_tar),
];

/// The mount fixture's layers: [`PULL_LAYERS`] with a 6 MiB file of noise in the base.
pub const MOUNT_LAYERS: [Step; 4] = [
    Step::Repack(base_layer_with_big_file),
    Step::Repack(changes_layer),
    Step::Repack(replacements_layer),
    Step::Tar(opaque_layer_tar),
];

/// An image made of `steps` in the OCI layout `w/layout` (tag `t`), and `umoci unpack` of it
/// in `w/oracle` (the rootfs is `w/oracle/rootfs`).
pub fn build_image(w: &Path, steps: &[Step]) -> Umoci {
    let umoci = build_layout(w, steps);
    umoci.unpack("t", &w.join("oracle"));
    umoci
}

/// An image made of `steps` in the OCI layout `w/layout` (tag `t`), built in `w/bundle`.
pub fn build_layout(w: &Path, steps: &[Step]) -> Umoci {
    let umoci = Umoci::init(&w.join("layout"), "t");
    let bundle = w.join("bundle");
    umoci.unpack("t", &bundle);
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Repack(change) => {
                change(&bundle.join("rootfs"));
                umoci.repack("t", &bundle);
            }
            Step::Tar(tar) => {
                let file = w.join(format!("layer{i}.tar"));
                std::fs::write(&file, tar()).unwrap();
                umoci.add_layer("t", &file);
            }
        }
    }
    umoci
}

/// Push `layout:t` to `src` with skopeo, then `lamina convert` it to `dst` (with a cache of
/// its own in `cache`).
pub fn push_and_convert(layout: &Path, src: &str, dst: &str, cache: &Path) {
    skopeo_push(layout, "t", src, None, false);
    assert_ok(
        &lamina()
            .args(["convert", src, dst])
            .env("LAMINA_CACHE_DIR", cache)
            .output()
            .unwrap(),
    );
}

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
    run(Command::new("mknod").arg(r.join("etc/null-ish")).args(["c", "1", "3"]));
    run(Command::new("mkfifo").arg(r.join("etc/pipe")));
}

/// Layer 1 of the mount fixture: the base and `usr/lib/big`, 6 MiB of noise (seed 42).
pub fn base_layer_with_big_file(r: &Path) {
    base_layer(r);
    write(r, "usr/lib/big", &noise(6 << 20, 42));
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
    run(Command::new("setfattr")
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
    run(Command::new("setfattr")
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

/// An index of two one-layer images, linux/amd64 and linux/arm64, whose file `platform` names
/// the platform; pushed (every platform) as `ADDR/REPO:t`, which is returned.
pub fn push_multi_platform(addr: &str, repo: &str, w: &Path) -> String {
    use super::layout::{Layer, Layout};
    let mut layout = Layout::create(&w.join(format!("layout-{repo}")));
    let manifests = ["amd64", "arm64"]
        .map(|arch| layout.image(&[Layer::gzip(&[Entry::File("platform", 0o644, arch.as_bytes())])], arch));
    let index = layout.index_of(manifests.to_vec());
    layout.tag("multi", index);
    let image = format!("{addr}/{repo}:t");
    skopeo_push(&layout.dir, "multi", &image, None, true);
    image
}
