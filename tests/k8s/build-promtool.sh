#!/usr/bin/env bash
# Builds promtool from the Go module proxy (the version pinned in promtool/go.mod, a `tool` directive) for the
# monitoring tests, and caches it like build.sh: under a directory keyed by the hash of the go.mod/go.sum and of
# this script, so a second run rebuilds nothing. Progress goes to stderr; the last line on stdout is the bin dir.
# A cold build compiles a few hundred modules (service discovery SDKs included): see docs/deploy.md for its time.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
key=$(cat "$here/build-promtool.sh" "$here"/promtool/go.{mod,sum} | sha256sum | cut -c1-16)
bin=$cache/promtool/$key/bin

export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

if [ -x "$bin/promtool" ]; then
  echo "promtool: cached in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$bin" "$cache/promtool"
exec 9>"$cache/promtool/.build.lock"
flock 9
if [ ! -x "$bin/promtool" ]; then
  start=$SECONDS
  echo "==> building promtool into $bin (GOMODCACHE=$GOMODCACHE)" >&2
  (cd "$here/promtool" && go build -trimpath -ldflags "-s -w" -o "$bin/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool)
  mv "$bin/promtool.tmp" "$bin/promtool"
  echo "==> promtool built in $(( SECONDS - start ))s" >&2
fi
echo "$bin"
