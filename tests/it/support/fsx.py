#!/usr/bin/env python3
"""Data-integrity exerciser in the style of fsx: random pwrite / truncate / shared-mmap writes /
fsync on one file, every read and the size checked against an in-memory model.

    fsx.py run SEED OPS FILE MODEL   apply OPS operations to FILE (its current bytes are the
                                     starting model), then save the model to MODEL
    fsx.py verify FILE MODEL         FILE must hold exactly MODEL's bytes

Prints one line per failure with the operation log tail, exits 1 on the first mismatch.
"""
import mmap
import os
import random
import sys

MAX_LEN = 1 << 22  # the file stays under 4 MiB
MAX_OP = 1 << 16


def fail(msg, log):
    print("MISMATCH: " + msg)
    for line in log[-15:]:
        print("  " + line)
    sys.exit(1)


def check_range(fd, model, off, n, log):
    got = os.pread(fd, n, off)
    want = bytes(model[off:off + n])
    if got != want:
        first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
        fail(f"read {n}@{off}: {len(got)} bytes, first difference at +{first}", log)


def run(seed, ops, path, model_path):
    rnd = random.Random(seed)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    model = bytearray(os.pread(fd, MAX_LEN * 2, 0))
    log = [f"start: {len(model)} bytes"]
    for i in range(ops):
        op = rnd.choices(["write", "truncate", "mapwrite", "read", "fsync", "append"], [30, 8, 15, 30, 4, 8])[0]
        size = len(model)
        if op == "write":
            off = rnd.randrange(0, min(size + MAX_OP, MAX_LEN))
            n = rnd.randrange(1, MAX_OP)
            data = rnd.randbytes(n)
            log.append(f"{i}: pwrite {n}@{off}")
            os.pwrite(fd, data, off)
            if off > size:
                model.extend(b"\0" * (off - size))
            model[off:off + n] = data
        elif op == "append":
            n = rnd.randrange(1, MAX_OP)
            data = rnd.randbytes(n)
            log.append(f"{i}: append {n}")
            afd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(afd, data)
            os.close(afd)
            model.extend(data)
        elif op == "truncate":
            new = rnd.randrange(0, min(2 * size + 1, MAX_LEN))
            log.append(f"{i}: truncate {size} -> {new}")
            os.ftruncate(fd, new)
            if new < size:
                del model[new:]
            else:
                model.extend(b"\0" * (new - size))
        elif op == "mapwrite":
            if size == 0:
                continue
            off = rnd.randrange(0, size)
            n = rnd.randrange(1, min(MAX_OP, size - off) + 1)
            data = rnd.randbytes(n)
            log.append(f"{i}: mmap write {n}@{off}")
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                m[off:off + n] = data
                if rnd.random() < 0.5:
                    m.flush()
            model[off:off + n] = data
        elif op == "read":
            if size == 0:
                continue
            off = rnd.randrange(0, size)
            n = rnd.randrange(1, MAX_OP)
            log.append(f"{i}: read {n}@{off}")
            check_range(fd, model, off, n, log)
        elif op == "fsync":
            log.append(f"{i}: fsync")
            os.fsync(fd)
        st = os.fstat(fd)
        if st.st_size != len(model):
            fail(f"size {st.st_size}, model {len(model)}", log)
    check_range(fd, model, 0, len(model) + 1, log)
    os.fsync(fd)
    os.close(fd)
    with open(model_path, "wb") as f:
        f.write(model)
    print(f"ok: {ops} operations, final size {len(model)}")


def verify(path, model_path):
    with open(model_path, "rb") as f:
        model = f.read()
    with open(path, "rb") as f:
        got = f.read()
    if got != model:
        first = next((i for i in range(min(len(got), len(model))) if got[i] != model[i]), min(len(got), len(model)))
        print(f"MISMATCH after remount: {len(got)} bytes vs model {len(model)}, first difference at {first}")
        sys.exit(1)
    print(f"ok: {len(model)} bytes as the model says")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        verify(sys.argv[2], sys.argv[3])
