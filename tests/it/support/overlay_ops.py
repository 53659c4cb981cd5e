#!/usr/bin/env python3
"""Differential driver for the writable layer: the same seeded random sequence of file-system
operations applied to two trees (a lamina writable mount and kernel overlayfs over the same
layers); after every operation the outcomes (success and value, or errno) must be equal.

usage: overlay_ops.py SEED COUNT ROOT_A ROOT_B     exit 0: all equal; 1: first difference printed

Paths are picked from the current tree of ROOT_B (walked without following symlinks) plus new
names; every open uses O_NOFOLLOW and parents are real directories, so no operation can leave
the trees through a symlink.
"""
import ctypes
import errno
import hashlib
import mmap
import os
import random
import stat
import sys

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def tree(root):
    """(dirs, non-dirs) relative to root, without following symlinks."""
    dirs, files = [""], []
    for d, ds, fs in os.walk(root, followlinks=False):
        rel = os.path.relpath(d, root)
        rel = "" if rel == "." else rel
        for x in ds:
            p = os.path.join(rel, x)
            if os.path.islink(os.path.join(root, p)):
                files.append(p)
            else:
                dirs.append(p)
        for x in fs:
            files.append(os.path.join(rel, x))
    return sorted(dirs), sorted(files)


def facts(path):
    st = os.lstat(path)
    size = st.st_size if stat.S_ISREG(st.st_mode) else None
    nlink = st.st_nlink if not stat.S_ISDIR(st.st_mode) else None
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, nlink)


def read_all(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        h = hashlib.sha256()
        # At most 16 MiB: a character device such as /dev/zero never ends.
        for _ in range(256):
            b = os.read(fd, 1 << 16)
            if not b:
                break
            h.update(b)
        return h.hexdigest()
    finally:
        os.close(fd)


def with_fd(path, flags, f):
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        return f(fd)
    finally:
        os.close(fd)


def mmap_write(path, off, data):
    def go(fd):
        size = os.fstat(fd).st_size
        if size == 0:
            return "empty"
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            o = off % size
            n = min(len(data), size - o)
            m[o:o + n] = data[:n]
            m.flush()
        return n
    return with_fd(path, os.O_RDWR, go)


def plan(rng, dirs, files, step):
    """One operation as (name, args) with paths relative to the root."""
    d = rng.choice(dirs)
    f = rng.choice(files) if files and rng.random() < 0.85 else d
    any_path = rng.choice(dirs[1:] + files) if len(dirs) + len(files) > 1 else f
    new = os.path.join(rng.choice(dirs), rng.choice(["n%d" % step, "x", "y", "sub"]))
    data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 100, 5000, 70000])))
    ops = [
        ("create", (new, data)),
        ("pwrite", (f, rng.randrange(0, 90000), data)),
        ("append", (f, data)),
        ("truncate", (f, rng.choice([0, 10, 4096, 100000]))),
        ("otrunc", (f, data)),
        ("read", (f,)),
        ("read", (f,)),
        ("mkdir", (new, rng.choice([0o755, 0o700, 0o2775]))),
        ("rmdir", (d,)),
        ("unlink", (f,)),
        ("rename", (any_path, new, 0)),
        ("rename", (any_path, rng.choice(dirs[1:] + files) if len(dirs) > 1 else new, 0)),
        ("rename", (any_path, new, RENAME_NOREPLACE)),
        ("rename", (any_path, rng.choice(dirs[1:] + files) if len(dirs) > 1 else new, RENAME_EXCHANGE)),
        ("link", (f, new)),
        ("symlink", (rng.choice(["target", "../up", "/abs/path"]), new)),
        ("chmod", (any_path, rng.choice([0o600, 0o755, 0o4755, 0o1777, 0o640]))),
        ("chown", (any_path, rng.choice([0, 1000, 65534]), rng.choice([0, 50, 1000]))),
        ("utime", (any_path, rng.randrange(1, 2_000_000_000))),
        ("setxattr", (any_path, rng.choice(["user.a", "user.b"]), data[:50])),
        ("removexattr", (any_path, rng.choice(["user.a", "user.b"]))),
        ("mkfifo", (new,)),
        ("fallocate", (f, rng.randrange(0, 50000), rng.randrange(1, 50000))),
        ("fsync", (f,)),
        ("mmap", (f, rng.randrange(0, 100000), data[:3000] or b"z")),
        ("stat", (any_path,)),
        ("listdir", (d,)),
        ("listxattr", (any_path,)),
    ]
    return rng.choice(ops)


def apply(root, op, args):
    p = lambda rel: os.path.join(root, rel)
    if op == "create":
        return with_fd(p(args[0]), os.O_CREAT | os.O_EXCL | os.O_WRONLY, lambda fd: os.write(fd, args[1]))
    if op == "pwrite":
        return with_fd(p(args[0]), os.O_WRONLY, lambda fd: os.pwrite(fd, args[2], args[1]))
    if op == "append":
        return with_fd(p(args[0]), os.O_WRONLY | os.O_APPEND, lambda fd: (os.write(fd, args[1]), os.fstat(fd).st_size))
    if op == "truncate":
        return with_fd(p(args[0]), os.O_WRONLY, lambda fd: os.ftruncate(fd, args[1]))
    if op == "otrunc":
        return with_fd(p(args[0]), os.O_WRONLY | os.O_TRUNC, lambda fd: os.write(fd, args[1]))
    if op == "read":
        return read_all(p(args[0]))
    if op == "mkdir":
        os.mkdir(p(args[0]), args[1])
        return facts(p(args[0]))
    if op == "rmdir":
        return os.rmdir(p(args[0]))
    if op == "unlink":
        return os.unlink(p(args[0]))
    if op == "rename":
        return renameat2(p(args[0]), p(args[1]), args[2])
    if op == "link":
        os.link(p(args[0]), p(args[1]), follow_symlinks=False)
        return facts(p(args[1]))
    if op == "symlink":
        return os.symlink(args[0], p(args[1]))
    if op == "chmod":
        if os.path.islink(p(args[0])):
            return "symlink"
        os.chmod(p(args[0]), args[1])
        return facts(p(args[0]))
    if op == "chown":
        os.lchown(p(args[0]), args[1], args[2])
        return facts(p(args[0]))
    if op == "utime":
        os.utime(p(args[0]), ns=(args[1] * 10**9, args[1] * 10**9), follow_symlinks=False)
        return os.lstat(p(args[0])).st_mtime_ns
    if op == "setxattr":
        return os.setxattr(p(args[0]), args[1], args[2], follow_symlinks=False)
    if op == "removexattr":
        return os.removexattr(p(args[0]), args[1], follow_symlinks=False)
    if op == "listxattr":
        return sorted(x for x in os.listxattr(p(args[0]), follow_symlinks=False) if not x.startswith("security."))
    if op == "mkfifo":
        return os.mkfifo(p(args[0]), 0o644)
    if op == "fallocate":
        return with_fd(p(args[0]), os.O_WRONLY, lambda fd: (os.posix_fallocate(fd, args[1], args[2]), os.fstat(fd).st_size))
    if op == "fsync":
        return with_fd(p(args[0]), os.O_RDONLY, lambda fd: os.fsync(fd))
    if op == "mmap":
        return mmap_write(p(args[0]), args[1], args[2])
    if op == "stat":
        return facts(p(args[0]))
    if op == "listdir":
        return sorted(os.listdir(p(args[0])))
    raise ValueError(op)


def outcome(root, op, args):
    try:
        return ("ok", apply(root, op, args))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def main():
    seed, count, a, b = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rng = random.Random(seed)
    counts = {}
    for step in range(count):
        dirs, files = tree(b)
        op, args = plan(rng, dirs, files, step)
        ra = outcome(a, op, args)
        rb = outcome(b, op, args)
        counts[(op, ra[0])] = counts.get((op, ra[0]), 0) + 1
        if os.environ.get("OVL_TRACE") and op in ("rename", "mkdir", "rmdir", "unlink", "link", "create", "mkfifo", "symlink"):
            print("%d %s %r -> %r" % (step, op, tuple(x for x in args if not isinstance(x, bytes)), ra), file=sys.stderr)
        if ra == rb:
            # The objects the operation named must look the same afterwards too.
            for x in args:
                if isinstance(x, str) and not x.startswith("/") and x not in ("target", "../up") and not x.startswith("user."):
                    fa, fb = outcome(a, "stat", (x,)), outcome(b, "stat", (x,))
                    if fa != fb:
                        ra, rb = ("after", x, fa), ("after", x, fb)
                        break
        if ra != rb:
            shown = tuple(x if not isinstance(x, bytes) else "<%d bytes>" % len(x) for x in args)
            print("seed %d step %d: %s%r\n  lamina:   %r\n  overlayfs: %r" % (seed, step, op, shown, ra, rb))
            sys.exit(1)
    print("seed %d: %d operations, same outcomes: %s" % (
        seed, count, ", ".join("%s %s %d" % (o, r, n) for (o, r), n in sorted(counts.items()))))


if __name__ == "__main__":
    main()
