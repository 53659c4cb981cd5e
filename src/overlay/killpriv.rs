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
//! caller with CAP_FSETID; else set-user-ID, and set-group-ID when the file is
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

/// What the set-ID rules need to know of the process a request comes from.
#[derive(Debug, Default)]
pub struct Caller {
    /// CAP_FSETID in its effective set.
    fsetid: bool,
    /// Its file-system group and supplementary groups.
    groups: Vec<u32>,
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
        Caller {
            fsetid: eff & (1 << CAP_FSETID) != 0,
            groups: fs_gid.into_iter().chain(groups).collect(),
        }
    }

    /// The set-ID bits of a regular file with `perm` and group `gid` that a write or
    /// truncate by this caller clears (the kernel's `setattr_should_drop_suidgid`).
    pub fn bits_to_clear(&self, perm: u16, gid: u32) -> u16 {
        if self.fsetid {
            return 0;
        }
        let sgid = perm & S_ISGID != 0 && (perm & S_IXGRP != 0 || !self.groups.contains(&gid));
        (perm & S_ISUID) | if sgid { S_ISGID } else { 0 }
    }
}

impl OverlayFs {
    /// After a request that wrote to or truncated `ino` (`written`) for process `pid`, with
    /// `attr` its attributes then: under KILLPRIV_V2, those with the set-ID bits cleared that
    /// the kernel would clear.
    pub fn after_write(&self, ino: u64, attr: FileAttr, written: bool, pid: u32) -> Result<FileAttr> {
        match written && self.killpriv {
            true => self.kill_suidgid(ino, attr, pid),
            false => Ok(attr),
        }
    }

    /// [`after_write`](Self::after_write), its attributes read first.
    pub fn after_write_of(&self, ino: u64, written: bool, pid: u32) -> Result<()> {
        if written && self.killpriv {
            self.after_write(ino, self.op_getattr(ino)?, true, pid)?;
        }
        Ok(())
    }

    /// Clear the set-ID bits of `ino` (whose attributes are `attr`) that a write or truncate
    /// by the process `pid` clears; `attr` again if none.
    fn kill_suidgid(&self, ino: u64, attr: FileAttr, pid: u32) -> Result<FileAttr> {
        if attr.perm & (S_ISUID | S_ISGID) == 0 || attr.kind != fuser::FileType::RegularFile {
            return Ok(attr);
        }
        let clear = Caller::of(pid).bits_to_clear(attr.perm, attr.gid);
        if clear == 0 {
            return Ok(attr);
        }
        let change = AttrChange {
            mode: Some(u32::from(attr.perm & !clear)),
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: None,
        };
        self.op_setattr(ino, &change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_rules_for_clearing_set_id_bits() {
        let nobody = Caller {
            fsetid: false,
            groups: vec![65534],
        };
        assert_eq!(nobody.bits_to_clear(0o4777, 0), 0o4000);
        assert_eq!(nobody.bits_to_clear(0o6777, 0), 0o6000);
        // Group-ID without group-execute: cleared only for a caller outside the group.
        assert_eq!(nobody.bits_to_clear(0o2767, 0), 0o2000);
        assert_eq!(nobody.bits_to_clear(0o2767, 65534), 0);
        assert_eq!(nobody.bits_to_clear(0o2777, 65534), 0o2000);
        assert_eq!(nobody.bits_to_clear(0o0777, 0), 0);
        let root = Caller {
            fsetid: true,
            groups: vec![0],
        };
        assert_eq!(root.bits_to_clear(0o6777, 1), 0);
        // A process that is gone clears what an unprivileged outsider would.
        let gone = Caller::of(u32::MAX);
        assert_eq!(gone.bits_to_clear(0o6767, 0), 0o6000);
    }
}
