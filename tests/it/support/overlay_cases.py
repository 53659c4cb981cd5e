#!/usr/bin/env python3
"""Fixed cases of overlayfs semantics run on two trees (a lamina writable mount and kernel
overlayfs over the same layers); every step's outcome (value or errno) must be equal.

usage: overlay_cases.py CASE ROOT_A ROOT_B     exit 0: all equal or known (KNOWN); 1: differences printed
CASE: chown-ctime | fallocate-ranges
"""
import ctypes
import errno
import hashlib
import os
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
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


# Where lamina cannot answer as kernel overlayfs: (case, name, step) → (lamina's outcome, why).
# Such a step passes only with exactly that outcome from lamina (ROOT_A).
FALLOCATE_BY_FUSE = "the kernel's FUSE refuses COLLAPSE_RANGE/INSERT_RANGE (EOPNOTSUPP) before the daemon sees them"
KNOWN = {}
for i, (mode, offset, length) in enumerate(FALLOCATE_CASES):
    if mode & (COLLAPSE | INSERT) and not mode & KEEP_SIZE:
        KNOWN[("fallocate-ranges", f"falloc{i}", (mode, offset, length))] = (("ENOTSUP", None), FALLOCATE_BY_FUSE)
for what in ["collapse", "insert"]:
    KNOWN[("fallocate-ranges", "usr/lib/big", what)] = (("ENOTSUP", None), FALLOCATE_BY_FUSE)

CASES = {"chown-ctime": chown_ctime, "fallocate-ranges": fallocate_ranges}


def main():
    case, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
    ra, rb = CASES[case](a), CASES[case](b)
    failed = len(ra) != len(rb)
    for x, y in zip(ra, rb):
        known = KNOWN.get((case,) + x[:2])
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
