#!/usr/bin/env python3
"""An independent reader of the tar-split in a zstd:chunked blob, for tests.

Usage: tarsplit_check.py BLOB
Reads the 64-byte footer at the blob's end (in a skippable frame: tocOffset tocLen
tocUncompressedLen type tarSplitOffset tarSplitLen tarSplitUncompressedLen "GNUlInUx", u64 LE),
decompresses the TOC and the tar-split (vbatts/tar-split JSON lines: type 2 = raw segment,
type 1 = file with name, size and the crc64-ISO of its payload), rebuilds the uncompressed
tar from the segments and the file payloads (each file's frames, blob[offset:endOffset] of its
TOC entry, decompressed), checks each payload's size, TOC digest and tar-split crc64, and
prints `sha256:HEX` of the rebuilt tar. Any inconsistency: a message on stderr, exit 1.
Python stdlib only; decompression by the `zstd` command.
"""
import base64
import hashlib
import json
import struct
import subprocess
import sys
from collections import defaultdict, deque

FOOTER_MAGIC = b"GNUlInUx"


def fail(msg):
    print(f"tarsplit_check: {msg}", file=sys.stderr)
    sys.exit(1)


def unzstd(data, what):
    p = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True)
    if p.returncode != 0:
        fail(f"zstd cannot decompress {what}: {p.stderr.decode(errors='replace')}")
    return p.stdout


def crc64_iso_table():
    poly = 0xD800000000000000  # ISO 3309, reflected, as Go's crc64.ISO
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


TABLE = crc64_iso_table()


def crc64_iso(data):
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def main():
    blob = open(sys.argv[1], "rb").read()
    frame = blob[-72:]
    if len(frame) != 72 or frame[:4] != b"\x50\x2a\x4d\x18" or struct.unpack("<I", frame[4:8])[0] != 64:
        fail("the blob does not end with a 64-byte skippable footer frame")
    footer = frame[8:]
    if footer[56:] != FOOTER_MAGIC:
        fail(f"footer magic {footer[56:]!r}")
    toc_off, toc_len, toc_raw, kind, ts_off, ts_len, ts_raw = struct.unpack("<7Q", footer[:56])
    if kind != 1:
        fail(f"TOC type {kind}")
    toc_json = unzstd(blob[toc_off : toc_off + toc_len], "the TOC")
    if len(toc_json) != toc_raw:
        fail(f"TOC is {len(toc_json)} bytes, the footer says {toc_raw}")
    toc = json.loads(toc_json)
    split_z = blob[ts_off : ts_off + ts_len]
    if toc.get("tarSplitDigest") not in (None, "sha256:" + hashlib.sha256(split_z).hexdigest()):
        fail("the tar-split does not match the TOC's tarSplitDigest")
    split = unzstd(split_z, "the tar-split")
    if len(split) != ts_raw:
        fail(f"tar-split is {len(split)} bytes, the footer says {ts_raw}")

    # Regular files with data, by name, in stream order (a name may come more than once).
    files = defaultdict(deque)
    for e in toc["entries"]:
        if e.get("type") == "reg" and e.get("size", 0) > 0:
            files[e["name"]].append(e)

    out = hashlib.sha256()
    total = segments = records = 0
    for n, line in enumerate(split.splitlines()):
        rec = json.loads(line)
        if rec.get("position") != n:
            fail(f"record {n} has position {rec.get('position')}")
        if rec["type"] == 2:
            raw = base64.b64decode(rec["payload"])
            segments += 1
        elif rec["type"] == 1:
            name = rec.get("name")
            if name is None:
                name = base64.b64decode(rec["name_raw"]).decode("utf-8", "surrogateescape")
            size = rec.get("size", 0)
            records += 1
            if size == 0:
                continue
            if not files[name]:
                fail(f"{name}: {size} bytes in the tar-split, no file with data in the TOC")
            e = files[name].popleft()
            raw = unzstd(blob[e["offset"] : e["endOffset"]], f"the frames of {name}")
            if len(raw) != size:
                fail(f"{name}: {len(raw)} bytes from the blob, the tar-split says {size}")
            if "sha256:" + hashlib.sha256(raw).hexdigest() != e["digest"]:
                fail(f"{name}: bytes do not match the TOC digest")
            if rec.get("payload") is not None:
                want = struct.unpack(">Q", base64.b64decode(rec["payload"]))[0]
                if crc64_iso(raw) != want:
                    fail(f"{name}: crc64 differs from the tar-split's")
        else:
            fail(f"record {n}: unknown type {rec['type']}")
        out.update(raw)
        total += len(raw)
    left = [name for name, q in files.items() if q]
    if left:
        fail(f"files in the TOC never named by the tar-split: {left[:5]}")
    print(f"sha256:{out.hexdigest()}")
    print(f"{records} files, {segments} segments, {total} bytes", file=sys.stderr)
    if total % 512:
        print(f"the rebuilt tar is not whole 512-byte blocks ({total % 512} bytes over)", file=sys.stderr)


main()
