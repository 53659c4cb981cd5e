#!/usr/bin/env bash
# The public file-system suites against lamina's writable layer and kernel overlayfs, on the
# same lower tree, with the comparison printed at the end:
#
#   pjdfstest       POSIX semantics (prove -r tests/), run in a fresh directory of each mount
#   fsx             xfstests' ltp/fsx: a new file and a copied-up file (one from the image)
#   fsstress        xfstests' ltp/fsstress: SEEDS seeds × OPS operations × 4 processes
#
# The suites are built from their sources, which are not part of lamina (nothing of them is
# committed): give each as a git URL or a local checkout.
#
# Usage: scripts/external-suites.sh PJDFSTEST_SRC XFSTESTS_SRC [SEEDS] [OPS] [OVERLAY]
#   OVERLAY: what serves lamina's writable mount (`mount --overlay`): fuse (default: lamina's
#   own overlay, the code under test) or kernel (kernel overlayfs over lamina's view)
#   e.g. scripts/external-suites.sh https://github.com/pjd/pjdfstest \
#          https://github.com/kdave/xfstests 5 20000
# Needs root, FUSE, kernel overlayfs; installs the build tools it needs with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,18p "$0"; exit 2; }
pjd_src=$1 xfs_src=$2 seeds=${3:-5} ops=${4:-20000} overlay=${5:-fuse}
root=$PWD

bash scripts/setup.sh > /dev/null
apt-get install -y -qq autoconf automake libtool libtool-bin perl gawk uuid-dev xfslibs-dev \
  libacl1-dev libaio-dev libcap-dev libgdbm-dev libgdbm-compat-dev liburing-dev > /dev/null
cargo build --release --quiet
lamina=$root/target/release/lamina

work=${LAMINA_SUITES_WORK:-/var/tmp/lamina-external-suites}
mkdir -p "$work"
fetch() { # SRC DEST: a checkout of SRC at DEST (kept between runs)
  [ -d "$2/.git" ] || [ -f "$2/.built" ] || git clone --quiet "$1" "$2"
}
fetch "$pjd_src" "$work/pjdfstest"
fetch "$xfs_src" "$work/xfstests"
if [ ! -x "$work/pjdfstest/pjdfstest" ]; then
  echo "== building pjdfstest" >&2
  (cd "$work/pjdfstest" && autoreconf -ifs > /dev/null 2>&1 && ./configure -q && make -s pjdfstest)
fi
if [ ! -x "$work/xfstests/ltp/fsx" ] || [ ! -x "$work/xfstests/ltp/fsstress" ]; then
  echo "== building xfstests (for ltp/fsx and ltp/fsstress)" >&2
  (cd "$work/xfstests" && make -s -j"$(nproc)" > "$work/xfstests-build.log" 2>&1) ||
    (cd "$work/xfstests/ltp" && make -s fsx fsstress >> "$work/xfstests-build.log" 2>&1)
fi
pjd=$work/pjdfstest fsx=$work/xfstests/ltp/fsx fsstress=$work/xfstests/ltp/fsstress

# A registry with the demo image, converted; its tree pulled as the kernel's lower directory.
run=$(mktemp -d "$work/run.XXXXXX")
export LAMINA_CACHE_DIR=$run/cache
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' \
  "$run/storage" "$port" > "$run/registry.yml"
docker-registry serve "$run/registry.yml" > "$run/registry.log" 2>&1 &
registry_pid=$!
cleanup() {
  rm -rf "$work/last-logs" && mkdir -p "$work/last-logs" && cp "$run"/*.log* "$work/last-logs/" 2> /dev/null || true
  "$lamina" umount "$run/lamina" 2> /dev/null || true
  umount "$run/kernel" 2> /dev/null || true
  kill "$registry_pid" 2> /dev/null || true
  chattr -R -ia "$run" 2> /dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$port/v2/" > /dev/null; do sleep 0.1; done
image=$(bash scripts/build-image.sh)
src=127.0.0.1:$port/suites/debian:src
lazy=127.0.0.1:$port/suites/debian:zc
skopeo copy --quiet --dest-tls-verify=false "oci:$image" "docker://$src"
"$lamina" convert --quiet "$src" "$lazy" > /dev/null
"$lamina" pull --quiet "$lazy" "$run/lower" > /dev/null

mkdir -p "$run/upper" "$run/work" "$run/kernel" "$run/lamina"
mount -t overlay overlay -o "lowerdir=$run/lower,upperdir=$run/upper,workdir=$run/work" "$run/kernel"
"$lamina" mount --quiet --writable --overlay "$overlay" "$lazy" "$run/lamina" > /dev/null

declare -A result
suite() { # NAME FS DIR: run suite NAME on mount FS, in DIR
  local name=$1 fs=$2 dir=$3 out=$run/$1-$2.log
  case $name in
    pjdfstest)
      mkdir -p "$dir/pjd" && (cd "$dir/pjd" && prove -r "$pjd/tests" > "$out" 2>&1) || true
      # prove's summary: tests run, the result, tests failed and TODO tests that passed (a
      # TODO test documents where Linux differs from POSIX: passing one differs from Linux).
      local tests failed todo
      tests=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$out")
      failed=$(sed -n 's/.*Failed: \([0-9]*\)).*/\1/p' "$out" | awk '{s += $1} END {print s + 0}')
      todo=$(awk '/TODO passed:/ {f = 1} f && /^ / {gsub(/TODO passed:/, ""); n += split($0, a, ",")} f && !/^ / {f = 0} END {print n + 0}' "$out")
      result[$name,$fs]="$(grep -E '^Result:' "$out" | tr -d '\n'), ${tests:-?} tests, $failed failed, $todo TODO passed"
      ;;
    fsx)
      local ok=0 n=0 s lower_file
      for s in $(seq 1 "$seeds"); do
        n=$((n + 2))
        "$fsx" -q -N "$ops" -S "$s" "$dir/fsx-new.$s" > "$out.new.$s" 2>&1 && ok=$((ok + 1))
        # A file of the image (the same one on both mounts), copied up by fsx's open.
        lower_file=$(cd "$run/lower" && find usr/share/doc -type f -size +1k | sort | sed -n "${s}p")
        "$fsx" -q -N "$ops" -S "$s" "$dir/$lower_file" > "$out.up.$s" 2>&1 && ok=$((ok + 1))
      done
      result[$name,$fs]="$ok of $n runs passed ($ops ops each)"
      ;;
    fsstress)
      local ok=0 s
      for s in $(seq 1 "$seeds"); do
        mkdir -p "$dir/fsstress.$s"
        "$fsstress" -d "$dir/fsstress.$s" -n "$ops" -p 4 -s "$s" > "$out.$s" 2>&1 && ok=$((ok + 1))
      done
      result[$name,$fs]="$ok of $seeds seeds passed ($ops ops × 4 processes)"
      ;;
  esac
}
for name in pjdfstest fsx fsstress; do
  for fs in kernel lamina; do
    echo "== $name on $fs overlay" >&2
    start=$(date +%s)
    suite "$name" "$fs" "$run/$fs"
    result[$name,$fs]+="; $(($(date +%s) - start)) s"
  done
done

echo
echo "machine: $(nproc) cores, $(uname -r); image $lazy; logs kept in $work/last-logs"
printf '| suite | kernel overlayfs | lamina --writable --overlay %s |\n|---|---|---|\n' "$overlay"
for name in pjdfstest fsx fsstress; do
  printf '| %s | %s | %s |\n' "$name" "${result[$name,kernel]}" "${result[$name,lamina]}"
done
