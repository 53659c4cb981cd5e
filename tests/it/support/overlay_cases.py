#!/usr/bin/env python3
"""Fixed cases of overlayfs semantics run on two trees (a lamina writable mount and kernel
overlayfs over the same layers); every step's outcome (value or errno) must be equal.

usage: overlay_cases.py CASE ROOT_A ROOT_B     exit 0: all equal; 1: differences printed
CASE: chown-ctime
"""
import errno
import os
import sys
import time

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


CASES = {"chown-ctime": chown_ctime}


def main():
    case, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
    ra, rb = CASES[case](a), CASES[case](b)
    failed = len(ra) != len(rb)
    for x, y in zip(ra, rb):
        if x != y:
            failed = True
            print(f"DIFF  {x!r}  vs  {y[2:]!r}")
        else:
            print(f"same  {x!r}")
    if failed:
        print(f"{case}: lamina and kernel overlayfs differ")
        sys.exit(1)
    print(f"{case}: all {len(ra)} steps alike")


if __name__ == "__main__":
    main()
