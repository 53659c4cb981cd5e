//! The tree oracle: every entry's type, mode, owner, size, content digest, link target,
//! device numbers, xattrs and modification time (seconds and nanoseconds), plus hard-link
//! groups, compared between two directory trees. Comparisons where some mtimes legitimately
//! differ leave them out explicitly ([`assert_same_tree_except`]), saying why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// What is compared of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// f, d, l, c, b, p, s
    pub kind: char,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (regular files only).
    pub size: Option<u64>,
    /// sha256 of the content (regular files only).
    pub sha256: Option<String>,
    /// Symlink target.
    pub link: Option<String>,
    /// Device numbers.
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time (seconds, nanoseconds); `None` once left out of a comparison.
    pub mtime: Option<(i64, i64)>,
}

/// A whole tree: path → facts, and the hard-link groups (sets of paths sharing an inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries below the root, by path relative to it.
    pub entries: BTreeMap<String, Facts>,
    /// Groups of two or more paths that are one inode.
    pub link_groups: BTreeSet<Vec<String>>,
}

/// Read a tree.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, root, &mut entries, &mut inodes);
    let link_groups = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Snapshot { entries, link_groups }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Facts>, inodes: &mut HashMap<(u64, u64), Vec<String>>) {
    let mut children: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    children.sort();
    for path in children {
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_file() {
            'f'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        let facts = Facts {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: (kind == 'f').then_some(m.len()),
            sha256: (kind == 'f').then(|| hex::encode(Sha256::digest(std::fs::read(&path).unwrap()))),
            link: (kind == 'l').then(|| std::fs::read_link(&path).unwrap().to_string_lossy().into_owned()),
            rdev: matches!(kind, 'c' | 'b').then(|| (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()))),
            xattrs: xattrs(&path),
            mtime: Some((m.mtime(), m.mtime_nsec())),
        };
        if kind != 'd' && m.nlink() > 1 {
            inodes.entry((m.dev(), m.ino())).or_default().push(rel.clone());
        }
        out.insert(rel, facts);
        if kind == 'd' {
            walk(root, &path, out, inodes);
        }
    }
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(c.as_c_str(), &mut names).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let key = CString::new(name).unwrap();
        if key.as_bytes() == b"security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(c.as_c_str(), key.as_c_str(), &mut value).unwrap();
        value.truncate(len);
        out.insert(key.to_string_lossy().into_owned(), value);
    }
    out
}

/// Panic with a readable list of differences unless the trees are equal, mtimes included.
pub fn assert_same_tree(actual: &Path, expected: &Path) {
    assert_same_snapshot(&snapshot(actual), &snapshot(expected), actual, expected);
}

/// Which parts of modification times a comparison leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtimes {
    /// Those of directories.
    OfDirs,
    /// Nanoseconds (one side comes from a layer that carries whole seconds only).
    Nanos,
    /// Both of the above.
    OfDirsAndNanos,
    /// All of them.
    All,
}

/// [`assert_same_tree`] without the mtimes `skip` names (the caller says why).
pub fn assert_same_tree_except(actual: &Path, expected: &Path, skip: Mtimes) {
    let (a, e) = (snapshot(actual), snapshot(expected));
    assert_same_snapshot(&without_mtimes(a, skip), &without_mtimes(e, skip), actual, expected);
}

/// [`assert_same_tree`] for a tree made by `lamina pull` (`actual`), directory mtimes left
/// out: they legitimately differ. A layer that adds or removes a name in a directory without
/// carrying an entry for that directory leaves the directory with the time of the pull in
/// `lamina pull`'s tree (as when containerd or Docker apply a layer: the kernel sets it),
/// whereas `umoci unpack` restores each parent's mtime after every entry and the lazy mount
/// shows the mtime of the directory's last entry in the layers; the OCI spec says nothing.
/// Two pulls made at different times differ in the same way.
pub fn assert_same_pulled_tree(actual: &Path, expected: &Path) {
    assert_same_tree_except(actual, expected, Mtimes::OfDirs);
}

/// The snapshot with the mtimes `skip` names left out.
pub fn without_mtimes(mut s: Snapshot, skip: Mtimes) -> Snapshot {
    for f in s.entries.values_mut() {
        let dirs = matches!(skip, Mtimes::OfDirs | Mtimes::OfDirsAndNanos);
        if skip == Mtimes::All || (dirs && f.kind == 'd') {
            f.mtime = None;
        } else if matches!(skip, Mtimes::Nanos | Mtimes::OfDirsAndNanos) {
            f.mtime = f.mtime.map(|(secs, _)| (secs, 0));
        }
    }
    s
}

/// The snapshot without xattrs whose value is empty: a tar's PAX record with an empty value
/// deletes the keyword (POSIX), so readers in Go (umoci, containers/storage) drop them.
pub fn without_empty_xattrs(mut s: Snapshot) -> Snapshot {
    for f in s.entries.values_mut() {
        f.xattrs.retain(|_, v| !v.is_empty());
    }
    s
}

/// The snapshot without its hard-link groups (the caller says why, and checks links
/// another way, e.g. with [`assert_upper_links_shown`]).
pub fn without_link_groups(mut s: Snapshot) -> Snapshot {
    s.link_groups.clear();
    s
}

/// Every group of names that are one file in the overlayfs upper directory `upper` shows as
/// one inode through the mount at `view`; returns how many groups were checked.
pub fn assert_upper_links_shown(view: &Path, upper: &Path) -> usize {
    let mut by_inode: HashMap<u64, Vec<String>> = HashMap::new();
    let mut stack = vec![upper.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.nlink() > 1 && !(m.file_type().is_char_device() && m.rdev() == 0) {
                let rel = p.strip_prefix(upper).unwrap().to_string_lossy().into_owned();
                by_inode.entry(m.ino()).or_default().push(rel);
            }
        }
    }
    let mut checked = 0;
    for names in by_inode.values().filter(|n| n.len() > 1) {
        let shown: BTreeSet<u64> = names
            .iter()
            .map(|n| std::fs::symlink_metadata(view.join(n)).unwrap().ino())
            .collect();
        assert!(
            shown.len() <= 1,
            "one file in the upper, several inodes in {}: {names:?}",
            view.display()
        );
        checked += 1;
    }
    checked
}

/// [`assert_same_tree`] on snapshots already taken (of `actual` and `expected`).
pub fn assert_same_snapshot(a: &Snapshot, e: &Snapshot, actual: &Path, expected: &Path) {
    let mut diffs = Vec::new();
    for (path, ef) in &e.entries {
        match a.entries.get(path) {
            None => diffs.push(format!("missing: {path} ({ef:?})")),
            Some(af) if af != ef => diffs.push(format!("differs: {path}\n   got  {af:?}\n   want {ef:?}")),
            _ => {}
        }
    }
    for path in a.entries.keys().filter(|p| !e.entries.contains_key(*p)) {
        diffs.push(format!("extra: {path}"));
    }
    if a.link_groups != e.link_groups {
        diffs.push(format!(
            "hard-link groups differ:\n   got  {:?}\n   want {:?}",
            a.link_groups, e.link_groups
        ));
    }
    assert!(
        diffs.is_empty(),
        "{} differs from {} in {} ways:\n{}",
        actual.display(),
        expected.display(),
        diffs.len(),
        diffs.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        !e.entries.is_empty(),
        "the expected tree {} is empty",
        expected.display()
    );
}
