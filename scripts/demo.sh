#!/usr/bin/env bash
# The demo: on a fresh machine, set everything up, start a local registry, push a real
# multi-layer Debian image (python3 inside), convert it to zstd:chunked, mount it lazily and
# run python3 from the mount — then compare with the full pull. Needs root (debootstrap,
# chroot, FUSE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh > /dev/null
echo "== building lamina (release)"
cargo build --release --quiet
lamina=$PWD/target/release/lamina

echo "== building a real Debian image (cached after the first run)"
image=$(bash scripts/build-image.sh)
work=$(mktemp -d /tmp/lamina-demo.XXXXXX)
export LAMINA_CACHE_DIR=$work/cache
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
cleanup() {
  "$lamina" umount "$work/mnt" 2> /dev/null || true
  kill "$registry_pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$port/v2/" > /dev/null; do sleep 0.1; done

src=127.0.0.1:$port/demo/debian-python:latest
lazy=127.0.0.1:$port/demo/debian-python:zstd-chunked
echo "== pushing $image to $src"
skopeo copy --quiet --dest-tls-verify=false "oci:$image" "docker://$src"
echo "== lamina convert (zstd:chunked: still an ordinary OCI image)"
"$lamina" convert --quiet "$src" "$lazy" | tail -1
"$lamina" inspect "$lazy" | tail -1

# Bytes the registry sent for the converted repository's blobs (from its access log).
blob_bytes() { grep '"GET /v2/demo/debian-python/blobs/' "$work/registry.log" | awk '{s += $10} END {print s + 0}'; }
image_bytes=$(skopeo inspect --raw --tls-verify=false "docker://$lazy" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]))')

echo "== lazy: lamina mount + python3 from the mount (cold cache)"
mkdir -p "$work/mnt"
before=$(blob_bytes)
start=$(date +%s.%N)
"$lamina" mount "$lazy" "$work/mnt"
chroot "$work/mnt" python3 /app/hello.py
lazy_s=$(echo "$(date +%s.%N) - $start" | bc)
fetched=$(( $(blob_bytes) - before ))
"$lamina" umount "$work/mnt"

echo "== full: lamina pull + python3 from the tree"
start=$(date +%s.%N)
"$lamina" pull --quiet "$src" "$work/full" > /dev/null
chroot "$work/full" python3 /app/hello.py
full_s=$(echo "$(date +%s.%N) - $start" | bc)

echo "== the usual way: skopeo copy + umoci unpack"
start=$(date +%s.%N)
skopeo copy --quiet --src-tls-verify=false "docker://$src" "oci:$work/oci:t"
umoci unpack --image "$work/oci:t" "$work/bundle" > /dev/null
baseline_s=$(echo "$(date +%s.%N) - $start" | bc)

printf '\n%-40s %10s\n' "" "seconds"
printf '%-40s %10.2f\n' "lazy: mount + run (cold cache)" "$lazy_s" "full: lamina pull + run" "$full_s" "skopeo copy + umoci unpack (no run)" "$baseline_s"
echo
printf '%-40s %10.1f MB\n' "image (compressed layers)" "$(echo "$image_bytes / 1000000" | bc -l)"
printf '%-40s %10.1f MB\n' "fetched by the lazy run" "$(echo "$fetched / 1000000" | bc -l)"
printf '%-40s %10.1f %%\n' "share of the image fetched" "$(echo "100 * $fetched / $image_bytes" | bc -l)"
