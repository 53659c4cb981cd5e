#!/usr/bin/env python3
"""Fixed cases of overlayfs semantics run on two trees (a lamina writable mount and kernel
overlayfs over the same layers); every step's outcome (value or errno) must be equal.

usage: overlay_cases.py CASE ROOT_A ROOT_B OVERLAY   exit 0: all equal or known; 1: differences printed
CASE: chown-ctime | fallocate-ranges | file-flags | set-id-bits
OVERLAY: what serves ROOT_A, `fuse` (lamina's own overlay: the KNOWN differences apply) or
`kernel` (kernel overlayfs over lamina's read-only view: every step must be equal)

file-flags sets immutable/append-only flags; every path it flags is cleared again in a
`finally`, so the trees can be removed whatever happens.
"""
import ctypes
import errno
import fcntl
import hashlib
import os
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
IMMUTABLE, APPEND = 0x10, 0x20
KEEP_SIZE, COLLAPSE, INSERT = 0x01, 0x08, 0x20
# Enough for ctime to move on any file system's clock granularity.
CTIME_STEP_S = 0.02


def outcome(f):
    try:
        return ("ok", f())
    except OSError as e:
        return (errno.errorcode.get(e.errno, str(e.errno)), None)


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


# --- chown(f, -1, -1) changes nothing but ctime ---------------------------------------------


def chown_ctime(root):
    steps = []
    write(os.path.join(root, "new-file"), b"x" * 100)
    os.mkdir(os.path.join(root, "new-dir"))
    for name in ["etc/chmod-me", "new-file", "new-dir", "usr/lib"]:
        p = os.path.join(root, name)
        os.chown(p, 0, 0)  # copied up now, so the next change is not a copy-up's
        before = os.stat(p).st_ctime_ns
        time.sleep(CTIME_STEP_S)
        os.chown(p, -1, -1)
        steps.append((name, "chown -1 -1 moves ctime", os.stat(p).st_ctime_ns > before))
    # Through an open descriptor too.
    p = os.path.join(root, "new-file")
    fd = os.open(p, os.O_RDWR)
    try:
        before = os.stat(p).st_ctime_ns
        time.sleep(CTIME_STEP_S)
        os.fchown(fd, -1, -1)
        steps.append(("new-file", "fchown -1 -1 moves ctime", os.fstat(fd).st_ctime_ns > before))
    finally:
        os.close(fd)
    return steps


# --- fallocate COLLAPSE_RANGE / INSERT_RANGE -------------------------------------------------


def fallocate(path, mode, offset, length):
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        if libc.fallocate(fd, mode, offset, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)
    return (os.stat(path).st_size, digest(path))


FALLOCATE_CASES = [
    (COLLAPSE, 1000, 4096),
    (COLLAPSE, 4096, 1000),
    (COLLAPSE, 4096, 4096),
    (COLLAPSE, 0, 65536),
    (COLLAPSE, 4096, 61440),
    (COLLAPSE | KEEP_SIZE, 4096, 4096),
    (INSERT, 1000, 4096),
    (INSERT, 4096, 4096),
    (INSERT, 65536, 4096),
    (INSERT, 200000, 4096),
]


def fallocate_ranges(root):
    steps = []
    data = bytes((i * 7) % 251 for i in range(65536))
    for i, (mode, offset, length) in enumerate(FALLOCATE_CASES):
        p = os.path.join(root, f"falloc{i}")
        write(p, data)
        steps.append((f"falloc{i}", (mode, offset, length), outcome(lambda: fallocate(p, mode, offset, length))))
    # A lower file: copied up first.
    p = os.path.join(root, "usr/lib/big")
    steps.append(("usr/lib/big", "collapse", outcome(lambda: fallocate(p, COLLAPSE, 4096, 4096))))
    steps.append(("usr/lib/big", "insert", outcome(lambda: fallocate(p, INSERT, 8192, 8192))))
    return steps


# --- FS_IOC_GETFLAGS / FS_IOC_SETFLAGS -------------------------------------------------------


def flags_fd(path):
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)


def getflags(path):
    fd = flags_fd(path)
    try:
        (v,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))
    finally:
        os.close(fd)
    return v & (IMMUTABLE | APPEND)


def setflags(path, bits):
    fd = flags_fd(path)
    try:
        (v,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", (v & ~(IMMUTABLE | APPEND)) | bits))
    finally:
        os.close(fd)


def file_flags(root):
    steps = []
    flagged = []

    def step(name, what, f):
        steps.append((name, what, outcome(f)))

    def flag(name, bits):
        p = os.path.join(root, name)
        flagged.append(p)
        step(name, f"setflags {bits:#x}", lambda: setflags(p, bits))
        step(name, "getflags", lambda: getflags(p))

    try:
        # Immutable, on a lower file (copied up by the flag).
        f = os.path.join(root, "etc/chmod-me")
        held = os.open(f, os.O_RDWR)  # open before the flag: its writes fail too
        flagged.append(f)
        flag("etc/chmod-me", IMMUTABLE)
        step("etc/chmod-me", "write held fd", lambda: os.write(held, b"held"))
        os.close(held)
        step("etc/chmod-me", "append", lambda: write(f, b"x", os.O_WRONLY | os.O_APPEND))
        step("etc/chmod-me", "open rdwr", lambda: os.close(os.open(f, os.O_RDWR)))
        step("etc/chmod-me", "read", lambda: len(open(f, "rb").read()) > 0)
        step("etc/chmod-me", "unlink", lambda: os.unlink(f))
        step("etc/chmod-me", "rename", lambda: os.rename(f, f + ".moved"))
        step("etc/chmod-me", "link", lambda: os.link(f, f + ".link"))
        step("etc/chmod-me", "chmod", lambda: os.chmod(f, 0o600))
        step("etc/chmod-me", "truncate", lambda: os.truncate(f, 0))
        step("etc/chmod-me", "utime", lambda: os.utime(f, (1, 1)))
        flag("etc/chmod-me", 0)
        step("etc/chmod-me", "append after -i", lambda: write(f, b"x", os.O_WRONLY | os.O_APPEND))

        # Append-only, on a new file.
        g = os.path.join(root, "appendonly")
        write(g, b"start\n")
        flag("appendonly", APPEND)
        step("appendonly", "append", lambda: write(g, b"more\n", os.O_WRONLY | os.O_APPEND))
        step("appendonly", "write without O_APPEND", lambda: write(g, b"over", os.O_WRONLY))
        step("appendonly", "truncating open", lambda: write(g, b"over", os.O_WRONLY | os.O_APPEND | os.O_TRUNC))
        step("appendonly", "truncate", lambda: os.truncate(g, 0))
        step("appendonly", "unlink", lambda: os.unlink(g))
        step("appendonly", "rename", lambda: os.rename(g, g + ".moved"))
        step("appendonly", "content", lambda: digest(g))
        flag("appendonly", 0)
        step("appendonly", "unlink after -a", lambda: os.unlink(g))

        # An immutable directory (a lower one).
        d = os.path.join(root, "usr/lib")
        flag("usr/lib", IMMUTABLE)
        step("usr/lib", "create inside", lambda: write(os.path.join(d, "new"), b"n"))
        step("usr/lib", "unlink inside", lambda: os.unlink(os.path.join(d, "big")))
        step("usr/lib", "mkdir inside", lambda: os.mkdir(os.path.join(d, "newdir")))
        step("usr/lib", "rename dir", lambda: os.rename(d, d + ".moved"))
        flag("usr/lib", 0)
        step("usr/lib", "create after -i", lambda: write(os.path.join(d, "new"), b"n"))
    finally:
        for p in flagged:
            try:
                setflags(p, 0)
            except OSError:
                pass
    return steps


# Where lamina's own overlay cannot answer as kernel overlayfs: (case, name, step) → (its
# outcome, why). Such a step passes only with exactly that outcome from ROOT_A.
FALLOCATE_BY_FUSE = "the kernel's FUSE refuses COLLAPSE_RANGE/INSERT_RANGE (EOPNOTSUPP) before the daemon sees them"
KNOWN = {
    ("file-flags", "etc/chmod-me", "write held fd"): (
        ("EPERM", None),
        "lamina writes to the upper file, which ext4 refuses once immutable; kernel overlayfs lets an earlier open write",
    ),
}
for i, (mode, offset, length) in enumerate(FALLOCATE_CASES):
    if mode & (COLLAPSE | INSERT) and not mode & KEEP_SIZE:
        KNOWN[("fallocate-ranges", f"falloc{i}", (mode, offset, length))] = (("ENOTSUP", None), FALLOCATE_BY_FUSE)
for what in ["collapse", "insert"]:
    KNOWN[("fallocate-ranges", "usr/lib/big", what)] = (("ENOTSUP", None), FALLOCATE_BY_FUSE)

# --- set-ID bits cleared by writes and truncates of callers without CAP_FSETID ---------------


def in_child(fn, parent=None):
    """Run fn() in a forked child while parent(pid), if given, runs here. The child's errno,
    255 for another error, or 0."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except OSError as e:
            code = e.errno or 1
        except BaseException:
            code = 255
        os._exit(code)
    if parent is not None:
        parent(pid)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def as_nobody(fn):
    """Run fn() in a child process with uid/gid 65534 and no capabilities; its errno or 0."""

    def child():
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        fn()

    return in_child(child)


CLONE_NEWUSER = 0x10000000


def as_userns_root(fn, gid=None):
    """Run fn() in a child process that is root of a new user namespace: it has CAP_FSETID
    there, never in the initial one. Without `gid` the namespace maps uid and gid 0 alone
    (written by the child); with it, 0..65536 onto the same IDs (written by this process, root
    outside), and the child then takes `gid` as its only group. Its errno or 0; exits the
    script if user namespaces cannot be made (the cases would prove nothing)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child():
        os.close(ready_r)
        os.close(go_w)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(254)
        if gid is None:
            for name, text in [("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")]:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        else:
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
        fn()

    def parent(pid):
        os.close(ready_w)
        os.close(go_r)
        if gid is not None and os.read(ready_r, 1) == b"r":
            for name in ["uid_map", "gid_map"]:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write("0 0 65536")
            os.write(go_w, b"g")
        os.close(ready_r)
        os.close(go_w)

    rc = in_child(child, parent)
    if rc == 254:
        sys.exit("unshare(CLONE_NEWUSER) failed: the user-namespace cases cannot run")
    return rc


def append(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"more", 8)
    finally:
        os.close(fd)


def set_id_bits(root):
    steps = []

    def mode_after(name, what, mode, fn, unprivileged=True, runner=None, owner=None):
        p = os.path.join(root, name)
        if not os.path.exists(p):
            write(p, b"x" * 100)
        if owner is not None:
            os.chown(p, owner, owner)
        os.chmod(p, mode)
        if runner is not None:
            rc = runner(lambda: fn(p))
        else:
            rc = as_nobody(lambda: fn(p)) if unprivileged else outcome(lambda: fn(p))
        steps.append((name, what, rc, oct(os.stat(p).st_mode & 0o7777)))

    trunc_open = lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    mode_after("w", "write by nobody, 04777", 0o4777, append)
    mode_after("w", "again after chmod 04777", 0o4777, append)
    mode_after("w", "write by nobody, 06777", 0o6777, append)
    mode_after("g", "write by nobody, 02767 (no g+x)", 0o2767, append)
    mode_after("t", "truncate by nobody, 06777", 0o6777, lambda p: os.truncate(p, 10))
    mode_after("o", "open O_TRUNC by nobody, 06777", 0o6777, trunc_open)
    mode_after("r", "write by root, 06777", 0o6777, append, unprivileged=False)
    mode_after("rt", "truncate by root, 06777", 0o6777, lambda p: os.truncate(p, 10), unprivileged=False)
    # Root of a user namespace of its own: the kernel asks for CAP_FSETID in the initial
    # namespace, so its writes and truncates clear the bits, whoever owns the file.
    mode_after("n0", "write by a user-namespace root, its own file, 06777", 0o6777, append, runner=as_userns_root)
    mode_after(
        "n1", "write by a user-namespace root, unmapped owner, 06777", 0o6777, append, runner=as_userns_root, owner=1000
    )
    mode_after(
        "n2",
        "truncate by a user-namespace root, unmapped owner, 06777",
        0o6777,
        lambda p: os.truncate(p, 10),
        runner=as_userns_root,
        owner=1000,
    )
    mode_after("n3", "truncate by a user-namespace root, its own file, 06777", 0o6777, lambda p: os.truncate(p, 10), runner=as_userns_root)
    # The same root with group 5 alone, over root's 06767 file (no group-execute, not its
    # group): set-user-ID goes (no CAP_FSETID in the initial namespace), set-group-ID stays
    # (CAP_FSETID over a file whose owner and group its namespace maps).
    mode_after(
        "n4",
        "write by a user-namespace root outside the group, mapped file, 06767",
        0o6767,
        append,
        runner=lambda f: as_userns_root(f, gid=5),
    )
    # A file of the image, copied up by the write.
    mode_after("etc/chmod-me", "image file, write by nobody, 04777", 0o4777, append)
    # chgrp by its owner, who is outside the file's group: set-group-ID goes.
    p = os.path.join(root, "c")
    write(p, b"x")
    os.chown(p, 65534, 0)
    mode_after("c", "chgrp by its owner outside the group, 02767", 0o2767, lambda p: os.chown(p, -1, 65534))
    return steps


CASES = {
    "chown-ctime": chown_ctime,
    "fallocate-ranges": fallocate_ranges,
    "file-flags": file_flags,
    "set-id-bits": set_id_bits,
}


def main():
    case, a, b, overlay = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if overlay not in ("fuse", "kernel"):
        sys.exit(f"OVERLAY must be fuse or kernel, not {overlay!r}")
    ra, rb = CASES[case](a), CASES[case](b)
    failed = len(ra) != len(rb)
    for x, y in zip(ra, rb):
        known = KNOWN.get((case,) + x[:2]) if overlay == "fuse" else None
        if known and x[2] == known[0]:
            print(f"known {x!r}  vs  {y[2:]!r}: {known[1]}")
        elif known or x != y:
            failed = True
            print(f"DIFF  {x!r}  vs  {y[2:]!r}" + (f" (known difference expected {known[0]!r})" if known else ""))
        else:
            print(f"same  {x!r}")
    if failed:
        print(f"{case}: lamina and kernel overlayfs differ")
        sys.exit(1)
    print(f"{case}: all {len(ra)} steps alike or known")


if __name__ == "__main__":
    main()
