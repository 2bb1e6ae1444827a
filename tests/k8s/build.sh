#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager) and helm from upstream sources
# through the Go module proxy. Each tool has its own small Go module (go.mod + go.sum committed) so the build is
# reproducible. Binaries are cached under a directory keyed by the hash of those files and of this script: a second
# run rebuilds nothing. Progress goes to stderr; the last line on stdout is the bin directory (tests/k8s reads it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
key=$(cat "$here/build.sh" "$here"/{etcd,helm,kubernetes}/go.{mod,sum} | sha256sum | cut -c1-16)
bin=$cache/k8s/$key/bin
tools=(etcd kube-apiserver kube-controller-manager helm)

export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

missing() {
  local t
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 0; done
  return 1
}

if ! missing; then
  echo "k8s test binaries: cached in $bin" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# Concurrent test runs (or helpers) wait for one build instead of racing on the same output.
exec 9>"$cache/k8s/.build.lock"
flock 9
start=$SECONDS

# version_of MODULE_DIR MODULE -> the pinned version of MODULE in that dir's go.mod
version_of() { grep -oE "^\s*(require )?$2 v[^ ]+" "$here/$1/go.mod" | awk '{print $NF}'; }

build() {  # build DIR LDFLAGS PACKAGE=NAME...
  local dir=$1 ldflags=$2 spec pkg name
  shift 2
  for spec in "$@"; do
    pkg=${spec%=*} name=${spec#*=}
    if [ -x "$bin/$name" ]; then
      echo "  $name: cached" >&2
      continue
    fi
    echo "  $name: go build $pkg ($(( SECONDS - start ))s elapsed)" >&2
    (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
    mv "$bin/$name.tmp" "$bin/$name"
  done
}

echo "==> building k8s test binaries into $bin (GOMODCACHE=$GOMODCACHE)" >&2
kube=$(version_of kubernetes k8s.io/kubernetes)
minor=$(echo "$kube" | cut -d. -f2)
kube_ld=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ld+=" -X $p.gitVersion=$kube -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
helm=$(version_of helm helm.sh/helm/v3)

build etcd "" go.etcd.io/etcd/server/v3=etcd
build helm "-X helm.sh/helm/v3/internal/version.version=$helm" helm.sh/helm/v3/cmd/helm=helm
build kubernetes "$kube_ld" \
  k8s.io/kubernetes/cmd/kube-apiserver=kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager=kube-controller-manager
echo "==> k8s test binaries built in $(( SECONDS - start ))s: kubernetes $kube, helm $helm" >&2
echo "$bin"
