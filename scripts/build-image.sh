#!/usr/bin/env bash
# Builds a real multi-layer Debian image as an OCI layout, from Debian's own packages, and
# prints the layout's path. Cached: a second run reuses what the first built.
#
#   layer 1  debootstrap --variant=minbase bookworm          (the distro)
#   layer 2  python3 installed with apt inside the tree       (a language runtime)
#   layer 3  an app script, and apt's lists removed           (whiteouts, as real images do)
#
# Usage: scripts/build-image.sh [CACHE_DIR]   (default ~/.cache/lamina-demo; needs root)
set -euo pipefail
cache=${1:-${LAMINA_DEMO_CACHE:-$HOME/.cache/lamina-demo}}
mirror=${LAMINA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
layout=$cache/layout
tag=debian-python
mkdir -p "$cache"

if [ -f "$layout/index.json" ] && grep -q "\"$tag\"" "$layout/index.json"; then
  echo "$layout:$tag"
  exit 0
fi

log=$cache/build.log
: > "$log"
work=$cache/work
rm -rf "$work" "$layout"
mkdir -p "$work"

if [ ! -x "$cache/minbase/usr/bin/apt-get" ]; then
  echo "build-image: debootstrap minbase bookworm (about 30 s)" >&2
  rm -rf "$cache/minbase"
  debootstrap --variant=minbase bookworm "$cache/minbase" "$mirror" >> "$log" 2>&1
fi

umoci init --layout "$layout" >> "$log"
umoci new --image "$layout:$tag" >> "$log"
umoci unpack --image "$layout:$tag" "$work/bundle" >> "$log"
rootfs=$work/bundle/rootfs

echo "build-image: layer 1 (base system)" >&2
cp -a "$cache/minbase/." "$rootfs/"
umoci repack --refresh-bundle --image "$layout:$tag" "$work/bundle" >> "$log"

echo "build-image: layer 2 (python3 from Debian)" >&2
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get update -q >> "$log" 2>&1
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  python3 python3-yaml >> "$log" 2>&1
rm -rf "$rootfs"/var/cache/apt/archives/*.deb
umoci repack --refresh-bundle --image "$layout:$tag" "$work/bundle" >> "$log"

echo "build-image: layer 3 (app)" >&2
rm -rf "$rootfs"/var/lib/apt/lists/*
mkdir -p "$rootfs/app"
cat > "$rootfs/app/hello.py" <<'PY'
import json, sys, yaml
print(json.dumps({"hello": "from a lamina-pulled image", "python": sys.version.split()[0],
                  "yaml": yaml.__version__}))
PY
umoci config --image "$layout:$tag" --config.cmd python3 --config.cmd /app/hello.py >> "$log"
umoci repack --image "$layout:$tag" "$work/bundle" >> "$log"
rm -rf "$work"
echo "$layout:$tag"
