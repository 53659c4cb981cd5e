//! One entry's metadata ([`Meta`]) and kind ([`EntryKind`]): the fields every view of a layer
//! entry shares. The types that need more (a path, chunks, tree links) hold a `Meta` and
//! dereference to it, so `entry.mode` reads the same everywhere.

/// Longest xattr value accepted (Linux's own limit).
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
/// Most xattrs accepted on one entry.
pub const MAX_XATTRS_PER_ENTRY: usize = 128;

/// Extended attributes, name → value.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What kind of object an entry creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file (including GNU sparse and contiguous files).
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Hard link to an earlier entry.
    HardLink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
}

/// One entry's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Object kind.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nanos: u32,
    /// Size of the file's data in bytes (regular files).
    pub size: u64,
    /// Symlink target, or hard-link target path; empty for other kinds.
    pub link: Vec<u8>,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Extended attributes, name → value, in archive order.
    pub xattrs: Xattrs,
}

impl Meta {
    /// Metadata of an object of `kind` with `mode`, owned by root, everything else empty.
    pub fn new(kind: EntryKind, mode: u32) -> Meta {
        Meta {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime_secs: 0,
            mtime_nanos: 0,
            size: 0,
            link: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }

    /// Modification time as (seconds, nanoseconds).
    pub fn mtime(&self) -> (i64, u32) {
        (self.mtime_secs, self.mtime_nanos)
    }

    /// Device numbers as (major, minor).
    pub fn rdev(&self) -> (u32, u32) {
        (self.dev_major, self.dev_minor)
    }
}

/// Implements `Deref`/`DerefMut` to the `meta: Meta` field of a type that extends it.
#[macro_export]
macro_rules! extends_meta {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = $crate::model::Meta;
            fn deref(&self) -> &$crate::model::Meta {
                &self.meta
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut $crate::model::Meta {
                &mut self.meta
            }
        }
    };
}
