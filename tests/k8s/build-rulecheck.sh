#!/usr/bin/env bash
# Builds rulecheck (rulecheck/main.go: Prometheus' own rule-file parser, model/rulefmt, pinned in rulecheck/go.mod)
# for the monitoring tests, and caches it like build.sh: under a directory keyed by the hash of its sources and of
# this script, so a second run rebuilds nothing. Progress goes to stderr; the last line on stdout is the bin dir.
# It compiles rulefmt's imports (PromQL parser, engine, templates) but none of promtool's service-discovery SDKs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
key=$(cat "$here/build-rulecheck.sh" "$here"/rulecheck/{go.mod,go.sum,main.go} | sha256sum | cut -c1-16)
bin=$cache/rulecheck/$key/bin

export GOMODCACHE=$cache/go/mod GOCACHE=${ORPHEUS_GOCACHE:-$cache/go/build}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

if [ -x "$bin/rulecheck" ]; then
  echo "rulecheck: cached in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$bin" "$cache/rulecheck"
exec 9>"$cache/rulecheck/.build.lock"
flock 9
if [ ! -x "$bin/rulecheck" ]; then
  start=$SECONDS
  echo "==> building rulecheck into $bin (GOMODCACHE=$GOMODCACHE)" >&2
  (cd "$here/rulecheck" && go build -trimpath -ldflags "-s -w" -o "$bin/rulecheck.tmp" .)
  mv "$bin/rulecheck.tmp" "$bin/rulecheck"
  echo "==> rulecheck built in $(( SECONDS - start ))s" >&2
fi
echo "$bin"
