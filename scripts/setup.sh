#!/usr/bin/env bash
# Installs what lamina's demo, tests and benchmarks need from Debian's packages. Idempotent:
# a package already installed is left alone, and apt-get runs only when something is missing.
set -euo pipefail

packages=(
  docker-registry   # distribution v2: the real registry the tests and demo run on loopback
  skopeo            # copies images between OCI layouts and registries (test images, baseline)
  umoci             # builds test images and unpacks them: the independent oracle
  apache2-utils     # htpasswd -B, for the registry's Basic auth in tests
  zstd              # the zstd command, to inspect and build layers by hand
  fuse3             # fusermount3, for FUSE mounts
  fuse-overlayfs    # the FUSE overlay peer in benchmarks
  fio               # write throughput benchmark of the writable layer
  tar               # GNU tar, to build layers umoci cannot (opaque directories)
  attr              # getfattr/setfattr, to inspect xattrs by hand
  pkg-config        # for -sys crates
  libfuse3-dev      # fuser's optional libfuse link and headers
  python3           # the bearer-token endpoint in tests
  hyperfine         # whole-command timing in benchmarks
  bc                # arithmetic in the demo script
  strace            # the benchmark suite's estimate of the bytes a program needs
  time              # GNU time: peak RSS of lamina in the benchmark suite
  librsvg2-bin      # rsvg-convert: the suite's plots as PNG beside the SVG
  curl              # readiness checks in the demo script
  debootstrap       # builds the real Debian image for the demo and benchmarks
  ca-certificates   # debootstrap over HTTPS mirrors, if configured
  podman            # lamina store's integration tests (additional layer store)
  containerd        # lamina snapshotter's integration tests (CRI pulls through the proxy plugin)
  openssl           # the TLS tests make a private CA and certificates
  protobuf-compiler # protoc, for the containerd-snapshots crate's build (containerd's gRPC API)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# The Debian containerd package would start a system service where systemd runs; the tests
# start their own, each with its own root, state and socket.
# The Debian docker-registry package starts a system service on :5000; lamina's tests and demo
# start their own on free loopback ports, so the system one is not needed. Leave it as found.
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }
