#!/usr/bin/env bash
# Builds the Go client, clients/go/bin/stylize, fully offline.
#
# Go sources come from Debian's packages under /usr/share/gocode (golang-google-grpc-dev and
# friends), compiled in GOPATH mode the way Debian builds its own Go packages: no module proxy,
# no network, no vendor directory. The stubs are generated from the one proto file into
# clients/go/styletransferv1/ (gitignored), at the import path its go_package names.
#
# Usage: clients/go/build.sh        (from any directory; safe to run again)
set -euo pipefail

start=$EPOCHREALTIME
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
module=github.com/styletransfer/styletransfer/clients/go
gocode=${GOCODE:-/usr/share/gocode}
packages="golang-go protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev"
packages+=" golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev"

for tool in go gofmt protoc protoc-gen-go protoc-gen-go-grpc; do
    if ! command -v "$tool" >/dev/null; then
        echo "build.sh: $tool not found; on Debian: apt-get install $packages" >&2
        exit 1
    fi
done
if [[ ! -d $gocode/src/google.golang.org/grpc ]]; then
    echo "build.sh: no gRPC sources under $gocode/src; on Debian: apt-get install $packages" >&2
    exit 1
fi

# 1. Stubs: messages (protoc-gen-go) and the client (protoc-gen-go-grpc) in one protoc run.
#    module= strips the module prefix from go_package, so they land in clients/go/styletransferv1.
rm -rf "$here/styletransferv1"
protoc --proto_path="$root/proto" \
    --go_out="$here" --go_opt=module="$module" \
    --go-grpc_out="$here" --go-grpc_opt=module="$module" \
    styletransfer/v1/style_transfer.proto

# 2. A throwaway GOPATH whose only entry is clients/go at its import path; Debian's tree second.
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/$(dirname "$module")"
ln -s "$here" "$gopath/src/$module"

export GO111MODULE=off GOPROXY=off GOFLAGS=-trimpath CGO_ENABLED=0
export GOPATH="$gopath:$gocode"
GOCACHE="${GOCACHE:-$(go env GOCACHE 2>/dev/null || true)}"
if [[ -z $GOCACHE || $GOCACHE == off ]]; then
    GOCACHE="$here/.cache/go-build"
fi
export GOCACHE

# 3. Checks, then the binary.
unformatted="$(gofmt -l "$here/cmd")"
if [[ -n $unformatted ]]; then
    echo "build.sh: not gofmt'd (run gofmt -w):" >&2
    echo "$unformatted" >&2
    exit 1
fi
go vet "$module/cmd/stylize"
go build -o "$here/bin/stylize" "$module/cmd/stylize"

elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "build.sh: built ${here#"$root/"}/bin/stylize ($(go version | cut -d' ' -f3)) in ${elapsed}s"
