#!/usr/bin/env bash
# The demo: on a fresh machine, set everything up, start a local registry, push a real
# multi-layer Debian image to it, and pull it with lamina next to skopeo + umoci, then run a
# program from the pulled tree. Needs root (debootstrap, chroot, owners).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh > /dev/null
echo "== building lamina (release)"
cargo build --release --quiet
lamina=$PWD/target/release/lamina

echo "== building a real Debian image (cached after the first run)"
image=$(bash scripts/build-image.sh)
work=$(mktemp -d /tmp/lamina-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/v2/" > /dev/null 2>&1 || python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null; do sleep 0.1; done

ref=127.0.0.1:$port/demo/debian-python:latest
echo "== pushing $image to $ref"
skopeo copy --quiet --dest-tls-verify=false "oci:$image" "docker://$ref"

echo "== lamina pull"
start=$(date +%s.%N)
"$lamina" pull "$ref" "$work/lamina-root"
lamina_s=$(echo "$(date +%s.%N) - $start" | bc)

echo "== skopeo copy + umoci unpack (the usual way)"
start=$(date +%s.%N)
skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/oci:t"
umoci unpack --image "$work/oci:t" "$work/bundle" > /dev/null
baseline_s=$(echo "$(date +%s.%N) - $start" | bc)

echo "== running the image's program from the lamina tree (chroot)"
cp /etc/resolv.conf "$work/lamina-root/etc/resolv.conf" 2>/dev/null || true
chroot "$work/lamina-root" python3 /app/hello.py

printf '\n%-28s %8.2f s\n%-28s %8.2f s\n%-28s %8.2f\n' \
  "lamina pull" "$lamina_s" "skopeo copy + umoci unpack" "$baseline_s" \
  "ratio (lamina / baseline)" "$(echo "$lamina_s / $baseline_s" | bc -l)"
