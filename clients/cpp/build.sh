#!/usr/bin/env bash
# Builds the C++ client, clients/cpp/build/stylize, with CMake against the distribution's gRPC.
#
# The stubs are generated at build time from proto/styletransfer/v1/style_transfer.proto into
# clients/cpp/build/generated/ (gitignored) by protoc and grpc_cpp_plugin. A second run only
# rebuilds what changed. Warnings in the client's own code fail the build.
#
# Usage: clients/cpp/build.sh        (from any directory; safe to run again)
#        JOBS=4 clients/cpp/build.sh  (parallel compile jobs; default 2)
set -euo pipefail

start=$EPOCHREALTIME
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
build="$here/build"
packages="cmake g++ make pkg-config protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev"

for tool in cmake c++ protoc grpc_cpp_plugin pkg-config; do
    if ! command -v "$tool" >/dev/null; then
        echo "build.sh: $tool not found; on Debian: apt-get install $packages" >&2
        exit 1
    fi
done

# Configuring an existing build tree again takes a fraction of a second and changes nothing.
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSTYLIZE_WARNINGS_AS_ERRORS=ON >/dev/null
cmake --build "$build" --parallel "${JOBS:-2}"

elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "build.sh: built ${build#"$root/"}/stylize ($(c++ --version | head -n1)) in ${elapsed}s"
