#!/usr/bin/env bash
# Builds a real multi-layer Debian image as an OCI layout, from Debian's own packages, and
# prints the layout's path. Cached: a second run reuses what the first built.
#
#   layer 1  debootstrap --variant=minbase bookworm          (the distro)
#   layer 2  python:  python3 installed with apt inside the tree   (a language runtime)
#            app:     build-essential and git (~400 MB unpacked)  (a larger application)
#   layer 3  an app file, and apt's lists removed             (whiteouts, as real images do)
#
# Usage: scripts/build-image.sh [python|app] [CACHE_DIR]
#        (default python, ~/.cache/lamina-demo; needs root). Prints LAYOUT:TAG.
set -euo pipefail
kind=python
case "${1:-}" in python|app) kind=$1; shift ;; esac
cache=${1:-${LAMINA_DEMO_CACHE:-$HOME/.cache/lamina-demo}}
mirror=${LAMINA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
layout=$cache/layout
tag=debian-$kind
mkdir -p "$cache"

if [ -f "$layout/index.json" ] && grep -q "\"$tag\"" "$layout/index.json"; then
  echo "$layout:$tag"
  exit 0
fi

log=$cache/build-$kind.log
: > "$log"
work=$cache/work-$kind
rm -rf "$work"
mkdir -p "$work"

if [ ! -x "$cache/minbase/usr/bin/apt-get" ]; then
  echo "build-image: debootstrap minbase bookworm (about 30 s)" >&2
  rm -rf "$cache/minbase"
  debootstrap --variant=minbase bookworm "$cache/minbase" "$mirror" >> "$log" 2>&1
fi
# As Debian's own images: no downloaded packages, no apt lists in the base layer.
rm -rf "$cache"/minbase/var/cache/apt/archives/*.deb "$cache"/minbase/var/lib/apt/lists/*

[ -f "$layout/index.json" ] || umoci init --layout "$layout" >> "$log"
final=$tag
tag=$final-building
umoci rm --image "$layout:$tag" >> "$log" 2>&1 || true
umoci new --image "$layout:$tag" >> "$log"
umoci unpack --image "$layout:$tag" "$work/bundle" >> "$log"
rootfs=$work/bundle/rootfs

echo "build-image: layer 1 (base system)" >&2
cp -a "$cache/minbase/." "$rootfs/"
umoci repack --refresh-bundle --image "$layout:$tag" "$work/bundle" >> "$log"

if [ "$kind" = app ]; then
  echo "build-image: layer 2 (build-essential and git from Debian, a few minutes)" >&2
  packages="build-essential git"
else
  echo "build-image: layer 2 (python3 from Debian)" >&2
  packages="python3 python3-yaml"
fi
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get update -q >> "$log" 2>&1
# shellcheck disable=SC2086
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  $packages >> "$log" 2>&1
rm -rf "$rootfs"/var/cache/apt/archives/*.deb
umoci repack --refresh-bundle --image "$layout:$tag" "$work/bundle" >> "$log"

echo "build-image: layer 3 (app)" >&2
rm -rf "$rootfs"/var/lib/apt/lists/*
mkdir -p "$rootfs/app"
if [ "$kind" = app ]; then
  cat > "$rootfs/app/hello.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) { puts("hello from a lamina-mounted compiler"); return 0; }
C
  umoci config --image "$layout:$tag" --config.cmd gcc --config.cmd -pipe \
    --config.cmd -c --config.cmd /app/hello.c --config.cmd -o --config.cmd /dev/null >> "$log"
else
  cat > "$rootfs/app/hello.py" <<'PY'
import json, sys, yaml
print(json.dumps({"hello": "from a lamina-pulled image", "python": sys.version.split()[0],
                  "yaml": yaml.__version__}))
PY
  umoci config --image "$layout:$tag" --config.cmd python3 --config.cmd /app/hello.py >> "$log"
fi
umoci repack --image "$layout:$tag" "$work/bundle" >> "$log"
umoci tag --image "$layout:$tag" "$final" >> "$log"
umoci rm --image "$layout:$tag" >> "$log"
umoci gc --layout "$layout" >> "$log"
rm -rf "$work"
echo "$layout:$final"
