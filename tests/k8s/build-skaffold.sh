#!/usr/bin/env bash
# Builds skaffold v2 from the Go module proxy into the shared cache, like tests/k8s/build.sh builds the control plane
# (its own small Go module in tests/k8s/skaffold, go.mod + go.sum committed; the binary is keyed by the hash of those
# and of this script, so a second run rebuilds nothing). The last line on stdout is the skaffold binary's path.
# skaffold's go.mod replaces k8s.io/client-go and friends; a dependency's replaces do not apply, so
# tests/k8s/skaffold/go.mod repeats them. The proxy serves v2.19.0 but not the module's version list, and sum.golang.org
# does not know it: go.sum (committed) pins its hash.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
key=$(cat "$here/build-skaffold.sh" "$here"/skaffold/go.{mod,sum} | sha256sum | cut -c1-16)
bin=$cache/skaffold/$key/skaffold

export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
export GONOSUMDB=github.com/GoogleContainerTools/skaffold

if [ -x "$bin" ]; then
  echo "skaffold: cached in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$(dirname "$bin")"
exec 9>"$cache/skaffold/.build.lock"
flock 9
if [ ! -x "$bin" ]; then
  start=$SECONDS
  version=$(grep -oE 'github.com/GoogleContainerTools/skaffold/v2 v[^ ]+' "$here/skaffold/go.mod" | awk '{print $2}')
  echo "==> building skaffold $version into $bin (GOMODCACHE=$GOMODCACHE)" >&2
  (cd "$here/skaffold" && go build -trimpath \
    -ldflags "-s -w -X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$version" \
    -o "$bin.tmp" github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold)
  mv "$bin.tmp" "$bin"
  echo "==> skaffold $version built in $(( SECONDS - start ))s" >&2
fi
echo "$bin"
