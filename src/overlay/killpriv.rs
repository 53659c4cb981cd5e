//! Set-ID bits under FUSE_HANDLE_KILLPRIV_V2.
//!
//! Without that flag the kernel asks the daemon for `security.capability` before **every**
//! write to a file (it cannot cache the answer), which costs a FUSE round trip per write even
//! when the data itself goes through passthrough: random 4 KiB writes ran at a fifth of kernel
//! overlayfs. With it, the kernel marks an inode that has no set-ID bits and no capability as
//! such (`S_NOSEC`) and stops asking; in exchange the file system clears the set-ID bits
//! itself where the VFS would:
//!
//! ```text
//! write, by a caller without CAP_FSETID     the kernel sends a setattr with nothing set
//!                                           (and marks a non-passthrough write
//!                                           FUSE_WRITE_KILL_SUIDGID)
//! truncate, open(O_TRUNC)                   a setattr of the size / an open, as any
//! chown(f, -1, -1)                          a setattr with nothing set
//! ```
//!
//! For each, the bits are cleared here by the kernel's own rule (`setattr_should_drop_suidgid`),
//! with the requesting process's capabilities and groups read from `/proc`: nothing for a
//! caller with CAP_FSETID in the initial user namespace (the kernel asks `capable()`, so the
//! root of a user namespace of its own does not count); else set-user-ID, and set-group-ID
//! when the file is
//! group-executable or the caller is not in its group. A file capability is the kernel's to
//! remove (it asks with removexattr, as before). Kept the same as kernel overlayfs by the test
//! `writable_semantics::writes_and_truncates_clear_set_id_bits_as_kernel_overlayfs`.
//! Left: root writing to a file with both a set-ID bit and a file capability loses the bit
//! (its setattr looks like a `chown(f, -1, -1)`, which clears it); the kernel keeps it.

use fuser::FileAttr;

use super::ops::AttrChange;
use super::{OverlayFs, Result};

const S_ISUID: u16 = 0o4000;
const S_ISGID: u16 = 0o2000;
const S_IXGRP: u16 = 0o0010;
/// CAP_FSETID's bit in a capability set.
const CAP_FSETID: u32 = 4;
/// `/proc/PID/ns/user` of a process in the initial user namespace (`PROC_USER_INIT_INO`, a
/// constant of the kernel's ABI).
const INIT_USER_NS: &str = "user:[4026531837]";

/// ID ranges of a user namespace's map: (first ID as the daemon sees it, count).
type IdRanges = Vec<(u32, u32)>;

/// What the set-ID rules need to know of the process a request comes from.
#[derive(Debug, Default)]
pub struct Caller {
    /// CAP_FSETID in its effective set (in its own user namespace).
    fsetid: bool,
    /// It lives in the initial user namespace.
    initial: bool,
    /// Its file-system group and supplementary groups.
    groups: Vec<u32>,
    /// Outside the initial namespace: the user and group IDs its namespace maps, as ranges
    /// of the daemon's IDs (`/proc/PID/uid_map`, `gid_map`).
    mapped: (IdRanges, IdRanges),
}

impl Caller {
    /// Process `pid`, from `/proc` (a process that is gone has no capability and no group:
    /// the bits are cleared).
    pub fn of(pid: u32) -> Caller {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return Caller::default();
        };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("");
        let eff = u64::from_str_radix(field("CapEff:").trim(), 16).unwrap_or(0);
        // Gid: real, effective, saved, file system.
        let fs_gid = field("Gid:").split_whitespace().nth(3).and_then(|g| g.parse().ok());
        let groups = field("Groups:").split_whitespace().filter_map(|g| g.parse().ok());
        let fsetid = eff & (1 << CAP_FSETID) != 0;
        // Where the capability counts matters only to a caller that has it.
        let (initial, mapped) = match fsetid {
            true => namespace_of(pid),
            false => (false, Default::default()),
        };
        Caller {
            fsetid,
            initial,
            mapped,
            groups: fs_gid.into_iter().chain(groups).collect(),
        }
    }

    /// The set-ID bits of a regular file with `perm`, owner `uid` and group `gid` that a
    /// write or truncate by this caller clears (the kernel's `setattr_should_drop_suidgid`):
    /// none for CAP_FSETID in the initial namespace (`capable()`); else set-user-ID, and
    /// set-group-ID when the file is group-executable, or the caller is neither in its group
    /// nor holds CAP_FSETID over it (`capable_wrt_inode_uidgid`: in its own namespace, which
    /// must map the file's owner and group).
    pub fn bits_to_clear(&self, perm: u16, uid: u32, gid: u32) -> u16 {
        if self.fsetid && self.initial {
            return 0;
        }
        let within = |ranges: &[(u32, u32)], id: u32| ranges.iter().any(|&(first, n)| id >= first && id - first < n);
        let over_file = self.fsetid && within(&self.mapped.0, uid) && within(&self.mapped.1, gid);
        let sgid = perm & S_ISGID != 0 && (perm & S_IXGRP != 0 || !(self.groups.contains(&gid) || over_file));
        (perm & S_ISUID) | if sgid { S_ISGID } else { 0 }
    }
}

/// Whether process `pid` lives in the initial user namespace; if not, the IDs its namespace
/// maps (users, groups).
fn namespace_of(pid: u32) -> (bool, (IdRanges, IdRanges)) {
    let map = |file: &str| id_ranges(&std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default());
    let uids = match std::fs::read_link(format!("/proc/{pid}/ns/user")) {
        Ok(ns) if ns.as_os_str() == INIT_USER_NS => return (true, Default::default()),
        Ok(_) => map("uid_map"),
        // The link needs ptrace access (a daemon without CAP_SYS_PTRACE may be refused it);
        // the map does not, and the initial namespace maps every ID onto itself.
        Err(_) => match map("uid_map") {
            u if u == [(0, u32::MAX)] => return (true, Default::default()),
            u => u,
        },
    };
    (false, (uids, map("gid_map")))
}

/// The outside ranges of a `/proc/PID/uid_map` or `gid_map` (lines `inside outside count`,
/// outside IDs as the reader's namespace sees them), as (first, count).
fn id_ranges(map: &str) -> IdRanges {
    map.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1).map(|x| x.parse::<u32>().ok());
            Some((f.next()??, f.next()??))
        })
        .collect()
}

impl OverlayFs {
    /// `setattr` for process `pid`. Under KILLPRIV_V2, first the set-ID bits a truncate or a
    /// write (a setattr with nothing set) clears for that caller, as the kernel does before
    /// the change; and after a chown, set-group-ID as the kernel's chown clears it for a
    /// caller outside the file's group (the daemon's own chown, as root, would keep it).
    pub fn op_setattr_as(&self, ino: u64, change: &AttrChange, pid: u32) -> Result<FileAttr> {
        if !self.killpriv {
            return self.op_setattr(ino, change);
        }
        self.before_write(ino, change.size.is_some() || change.is_empty(), pid)?;
        let chown_sgid = match change.uid.is_some() || change.gid.is_some() {
            true => {
                let old = self.op_getattr(ino)?;
                self.bits_for(&old, pid) & S_ISGID
            }
            false => 0,
        };
        let attr = self.op_setattr(ino, change)?;
        match chown_sgid != 0 && attr.perm & S_ISGID != 0 {
            true => self.op_setattr(ino, &mode_change(attr.perm & !S_ISGID)),
            false => Ok(attr),
        }
    }

    /// Before a request that writes to or truncates `ino` (`writes`) for process `pid`:
    /// under KILLPRIV_V2, clear the set-ID bits the kernel would clear for that caller.
    pub fn before_write(&self, ino: u64, writes: bool, pid: u32) -> Result<()> {
        if !(writes && self.killpriv) {
            return Ok(());
        }
        let attr = self.op_getattr(ino)?;
        let clear = self.bits_for(&attr, pid);
        if clear != 0 {
            self.op_setattr(ino, &mode_change(attr.perm & !clear))?;
        }
        Ok(())
    }

    /// The set-ID bits of a file with `attr` that a write by process `pid` clears (its
    /// capabilities and groups read only when there are bits to clear).
    fn bits_for(&self, attr: &FileAttr, pid: u32) -> u16 {
        if attr.perm & (S_ISUID | S_ISGID) == 0 || attr.kind != fuser::FileType::RegularFile {
            return 0;
        }
        Caller::of(pid).bits_to_clear(attr.perm, attr.uid, attr.gid)
    }
}

/// A change of the mode bits alone.
fn mode_change(perm: u16) -> AttrChange {
    AttrChange {
        mode: Some(u32::from(perm)),
        uid: None,
        gid: None,
        size: None,
        atime: None,
        mtime: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_rules_for_clearing_set_id_bits() {
        let nobody = Caller {
            groups: vec![65534],
            initial: true,
            ..Caller::default()
        };
        assert_eq!(nobody.bits_to_clear(0o4777, 0, 0), 0o4000);
        assert_eq!(nobody.bits_to_clear(0o6777, 0, 0), 0o6000);
        // Group-ID without group-execute: cleared only for a caller outside the group.
        assert_eq!(nobody.bits_to_clear(0o2767, 0, 0), 0o2000);
        assert_eq!(nobody.bits_to_clear(0o2767, 0, 65534), 0);
        assert_eq!(nobody.bits_to_clear(0o2777, 0, 65534), 0o2000);
        assert_eq!(nobody.bits_to_clear(0o0777, 0, 0), 0);
        let root = Caller {
            fsetid: true,
            initial: true,
            groups: vec![0],
            ..Caller::default()
        };
        assert_eq!(root.bits_to_clear(0o6777, 1000, 1), 0);
        // Root of a user namespace mapping 0..65536 onto 100000..: never `capable()`, so
        // set-user-ID goes; set-group-ID without group-execute stays over a file whose owner
        // and group it maps, even outside the group.
        let ns_root = Caller {
            fsetid: true,
            initial: false,
            groups: vec![100005],
            mapped: (id_ranges("0 100000 65536\n"), id_ranges("0 100000 65536\nbad\n")),
        };
        assert_eq!(ns_root.bits_to_clear(0o6777, 100000, 100000), 0o6000);
        assert_eq!(ns_root.bits_to_clear(0o6767, 100000, 100000), 0o4000);
        assert_eq!(ns_root.bits_to_clear(0o6767, 0, 100000), 0o6000);
        assert_eq!(ns_root.bits_to_clear(0o2767, 100000, 0), 0o2000);
        // A process that is gone clears what an unprivileged outsider would.
        let gone = Caller::of(u32::MAX);
        assert_eq!(gone.bits_to_clear(0o6767, 0, 0), 0o6000);
    }
}
