#!/usr/bin/env bash
# Installs the system packages the tests drive from outside Python, from Debian's archive:
# Prometheus and promtool (rules and scraping tests), Redis (the shared job store), tcmalloc (the
# server's allocator), a C compiler (the trunk's C kernels) and the toolchains of the C++ and Go clients. Node.js and npm are expected from the machine (the tools/ and clients/node packages
# install with them). Packages already present are left alone.
#
# Run as root or with sudo. Without either, it lists what is missing and exits 0, so `make
# setup` still works on a developer's machine; the tests that need a missing tool then skip
# and say so (and fail under CI=true).
set -euo pipefail
PACKAGES=(
  prometheus
  # The shared job store's engine (tests start their own servers on loopback).
  redis-server
  # tcmalloc, the allocator the server runs jobs on (service/memory.py).
  libtcmalloc-minimal4
  # The C compiler and OpenMP that build the trunk's C kernels (setup.py) at install.
  gcc libc6-dev libgomp1
  # C++ client: protoc, the gRPC C++ plugin and libraries, CMake.
  cmake g++ make pkg-config protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev
  # Go client: the Go toolchain, gRPC-Go and the protoc plugins, all offline from Debian. The
  # 1.5 protobuf shim is named because apt would otherwise pick the 1.3 one, which fails.
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev
)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo)
else
  echo "install-system-deps: not root and no sudo; missing: ${missing[*]}" >&2
  echo "install-system-deps: the tests that need them will skip (and fail under CI=true)" >&2
  exit 0
fi
echo "install-system-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
