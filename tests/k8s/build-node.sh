#!/usr/bin/env bash
# Builds what the real-node e2e cluster (tests/e2e/cluster.py) runs on top of the control plane of build.sh:
#   node/       kubelet, kube-scheduler, kube-proxy, kubectl (the same k8s.io/kubernetes as kubernetes/go.mod)
#   containerd/ containerd, containerd-shim-runc-v2, ctr (containerd 2.x: Kubernetes >= 1.36 needs it)
#   coredns/    coredns with only the plugins cluster DNS needs (main.go)
#   traefik/    traefik, the gateway (Ingress and Gateway API providers)
#   pause/      the pod sandbox image: a static C binary in a hand-made OCI archive (pause.tar), and a busybox
#               image (busybox.tar, from Debian's busybox-static) for the smoke tests
# Each part is cached under $cache/node/parts/<part>-<hash of its inputs and this script>, so changing one part
# rebuilds only that part. The bin directory (last line on stdout) holds hard links to every part's outputs.
# Parts build one after another, after build.sh's own build (same lock): the machine has few cores.
# Progress and per-part build times go to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
parts=(node containerd coredns pause traefik)

part_key() { cat "$0" "$here/$1"/* | sha256sum | cut -c1-16; }
part_dir() { echo "$cache/node/parts/$1-$(part_key "$1")"; }

all_key=$(for p in "${parts[@]}"; do part_key "$p"; done | sha256sum | cut -c1-16)
bin=$cache/node/$all_key/bin
if [ -f "$bin/.complete" ]; then
  echo "node binaries: cached in $bin" >&2
  echo "$bin"
  exit 0
fi

# The node must run the same Kubernetes as the control plane: compare the pinned versions and the staging replaces.
pins() { sed -n -e '/^replace (/,/^)/p' -e '/^\s*k8s.io\/kubernetes v/p' "$here/$1/go.mod" | sed 's#// indirect##'; }
if ! diff <(pins kubernetes) <(pins node) >&2; then
  echo "tests/k8s/node/go.mod pins another k8s.io/kubernetes (or other replaces) than tests/k8s/kubernetes/go.mod" >&2
  exit 1
fi

mkdir -p "$cache/node/parts"
exec 9>"$cache/k8s/.build.lock"  # the same lock as build.sh: one Go build at a time on this machine
flock 9

version_of() { grep -oE "^\s*(require )?$2 v[^ ]+" "$here/$1/go.mod" | awk '{print $NF}'; }

go_build() {  # [TAGS=...] go_build PART LDFLAGS PACKAGE=NAME... (into the part's directory)
  local part=$1 ldflags=$2 out spec
  out=$(part_dir "$part")
  shift 2
  for spec in "$@"; do
    (cd "$here/$part" && go build -trimpath -tags "${TAGS:-}" -ldflags "-s -w $ldflags" -o "$out.tmp/${spec#*=}" "${spec%=*}")
  done
}

build_part() {  # build_part PART: runs build_<part> into a temporary directory, then renames it into place
  local part=$1 out start=$SECONDS
  out=$(part_dir "$part")
  if [ -d "$out" ]; then
    echo "  $part: cached ($out)" >&2
    return
  fi
  echo "  $part: building" >&2
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  "build_$part"
  mv "$out.tmp" "$out"
  echo "  $part: built in $(( SECONDS - start ))s" >&2
}

build_node() {
  local kube minor ld="" p
  kube=$(version_of node k8s.io/kubernetes)
  minor=$(echo "$kube" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$kube -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  go_build node "$ld" k8s.io/kubernetes/cmd/kubelet=kubelet k8s.io/kubernetes/cmd/kube-scheduler=kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy=kube-proxy k8s.io/kubernetes/cmd/kubectl=kubectl
}

build_containerd() {
  local v m=github.com/containerd/containerd/v2
  v=$(version_of containerd $m)
  # No snapshotters that need cgo or host tools we do not have; overlayfs (the default) is all the node uses.
  TAGS=no_btrfs,no_devmapper,no_zfs go_build containerd "-X $m/version.Version=${v#v} -X $m/version.Revision=module-proxy" \
    $m/cmd/containerd=containerd $m/cmd/containerd-shim-runc-v2=containerd-shim-runc-v2 $m/cmd/ctr=ctr
}

build_coredns() {
  # The main package is tests/k8s/coredns itself.
  go_build coredns "" .=coredns
}

build_traefik() {
  local v m=github.com/traefik/traefik/v3
  v=$(version_of traefik $m)
  go_build traefik "-X $m/pkg/version.Version=$v -X $m/pkg/version.Codename=module-proxy" $m/cmd/traefik=traefik
}

build_pause() {
  local out
  out=$(part_dir pause).tmp
  gcc -static -O2 -s -o "$out/pause" "$here/pause/pause.c"
  local tag
  tag=$(part_key pause)
  python3 "$here/pause/oci_image.py" "localhost/orpheus-pause:$tag" "$out/pause.tar" "$out/pause:/pause" \
    --user 65535:65535
  echo "localhost/orpheus-pause:$tag" >"$out/pause.image"
  # Debian's static busybox (busybox-static): a shell, wget, nslookup and httpd for the cluster's smoke tests.
  python3 "$here/pause/oci_image.py" "localhost/orpheus-e2e-busybox:$tag" "$out/busybox.tar" /bin/busybox:/bin/busybox
  echo "localhost/orpheus-e2e-busybox:$tag" >"$out/busybox.image"
}

start=$SECONDS
echo "==> building the e2e node's binaries (GOMODCACHE=$GOMODCACHE)" >&2
for p in "${parts[@]}"; do build_part "$p"; done
rm -rf "$bin" && mkdir -p "$bin"
for p in "${parts[@]}"; do ln "$(part_dir "$p")"/* "$bin/"; done
touch "$bin/.complete"
echo "==> e2e node binaries ready in $(( SECONDS - start ))s" >&2
echo "$bin"
