//! Which kernel overlayfs has an upper directory as its upperdir, from
//! `/proc/self/mountinfo`: a stacked mount (`mount::stacked`) outlives a daemon that was
//! killed, and its upper must not be mounted again under it.

use std::path::{Path, PathBuf};

/// The mount point of a kernel overlayfs whose upperdir is `upper`, if one is mounted (read
/// from `/proc/self/mountinfo`, where paths are octal-escaped).
pub fn overlay_on(upper: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(upper).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        if r.next()? != "overlay" {
            return None;
        }
        let options = r.nth(1)?;
        let upper = options.split(',').find_map(|o| o.strip_prefix("upperdir="))?;
        let point = left.split(' ').nth(4)?;
        (Path::new(&unescape_octal(upper)) == want).then(|| PathBuf::from(unescape_octal(point)))
    })
}

/// The `\NNN` (octal) escapes with which /proc/self/mountinfo writes spaces, tabs, newlines,
/// commas and backslashes in paths, undone.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], digits) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/a\040b\054c\134d"), r"/a b,c\d");
        assert_eq!(unescape_octal(r"/plain\9x\"), r"/plain\9x\");
    }
}
