#!/usr/bin/env bash
# Builds the project's images with buildah (no Docker daemon, no registry): the operator image and the CPU PyTorch
# runtime image, from the same Dockerfiles as the published images, on a local Debian base instead of python:slim.
#
#   images/build.sh [operator] [torch]          both when none is named
#   images/build.sh --skaffold operator|torch   skaffold's custom builder (skaffold.yaml, profile `cpu`): also tags
#                                               the image as $IMAGE (and imports that into containerd, see below)
#   images/build.sh --buildah ARGS...           buildah on this script's storage (tests run the images with it)
#   images/build.sh --docker-api SOCKET         serve a Docker-compatible API for this storage on SOCKET (podman,
#                                               in the foreground): skaffold's local builder inspects and tags the
#                                               images it built through it (DOCKER_HOST=unix://SOCKET)
#
# stdout, one `key=value` per line (progress and timings go to stderr):
#   operator_image=localhost/orpheus-tts-operator:<tag>   operator_archive=<cache>/images/archives/<...>.tar
#   torch_image=localhost/orpheus-tts-torch:<tag>         torch_archive=<cache>/images/archives/<...>.tar
# The archives hold uncompressed layers (docker-archive format), ready for `ctr -n k8s.io images import`. <tag> is
# a hash of the image's inputs (its base, the build context, the build recipe), so a warm run rebuilds and rewrites
# nothing.
#
# Set ORPHEUS_CONTAINERD_ADDRESS (a containerd socket) to import each image into containerd's k8s.io namespace
# (ctr from $ORPHEUS_CTR or PATH), where the kubelet finds it (pods use imagePullPolicy IfNotPresent).
#
# Everything lives under ${ORPHEUS_CACHE:-~/.cache/orpheus-tts}/images: the base rootfs (keyed by its recipe),
# buildah's storage (so its layer cache survives between runs), pip's download cache (a build cache mount) and the
# archives. Needs root, buildah, runc and debootstrap (scripts/system-packages.txt).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}/images

# The local stand-in for python:3.12-slim-bookworm: Debian bookworm's own Python (3.11) and pip on a minimal rootfs.
suite=bookworm
mirror=${ORPHEUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base_packages=python3,python3-pip,ca-certificates

mkdir -p "$cache"/{base,storage,run,tmp,cni,archives}
# buildah with its storage, its temporary files (where RUN --mount=type=cache lives) and its CNI directory under
# the cache: nothing in /var/lib/containers, /var/tmp or /etc/cni. Builds use the host network and run no CNI
# plugin, but buildah still creates a lock file in its CNI config directory (/etc/cni/net.d by default).
printf '[network]\nnetwork_config_dir = "%s"\n' "$cache/cni" >"$cache/containers.conf.$$"
mv "$cache/containers.conf.$$" "$cache/containers.conf"  # atomic: a concurrent buildah never reads half of it
bah() {
  CONTAINERS_CONF=$cache/containers.conf TMPDIR=$cache/tmp \
    buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver overlay "$@"
}

if [ "${1:-}" = --buildah ]; then
  shift
  bah "$@"
  exit
fi
if [ "${1:-}" = --docker-api ]; then
  # skaffold's local builder needs a Docker daemon even for a custom builder (it asks it for the image's ID and
  # tags the image with it); there is none here, and podman serves the same API on the same storage.
  CONTAINERS_CONF=$cache/containers.conf TMPDIR=$cache/tmp exec podman --root "$cache/storage" \
    --runroot "$cache/run" --tmpdir "$cache/run/libpod" --storage-driver overlay system service --time=0 "unix://$2"
fi

skaffold=0
if [ "${1:-}" = --skaffold ]; then
  skaffold=1
  shift
  [ $# -eq 1 ] || { echo "usage: $0 --skaffold operator|torch" >&2; exit 2; }
  : "${IMAGE:?skaffold sets IMAGE}"
fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(operator torch)

# One build at a time (tests, skaffold, CI steps): the others wait and then find everything cached.
exec 9>"$cache/.lock"
flock 9
# What an interrupted build left in buildah's temporary directory (pip's cache mount stays).
find "$cache/tmp" -mindepth 1 -maxdepth 1 ! -name buildah-cache -exec rm -rf {} +
find "$cache/archives" -name '*.tmp' -delete

log() { echo "==> images: $*" >&2; }
since() { echo "$(( SECONDS - $1 ))s"; }

# --- the base: debootstrap rootfs (cached as a tar, keyed by its recipe) committed as an image ---------------------
make_rootfs() {  # DIR -> DIR/rootfs.tar
  local dir=$1 t=$SECONDS
  rm -rf "$dir/rootfs"
  mkdir -p "$dir"
  # debootstrap mounts /proc and /sys inside the rootfs while it works; never leave them behind.
  trap "umount -R '$dir/rootfs/proc' '$dir/rootfs/sys' 2>/dev/null || true" EXIT
  log "debootstrap --variant=minbase $suite ($base_packages)"
  debootstrap --variant=minbase --include="$base_packages" "$suite" "$dir/rootfs" "$mirror" >&2
  umount -R "$dir/rootfs/proc" "$dir/rootfs/sys" 2>/dev/null || true
  # What python:slim leaves out: package lists and caches, docs. No host files (debootstrap copies these two in).
  # Like python:slim, pip may install into the system Python (no PEP 668 marker).
  rm -rf "$dir/rootfs"/var/lib/apt/lists/* "$dir/rootfs"/var/cache/apt/* "$dir/rootfs"/var/log/* \
    "$dir/rootfs"/usr/share/doc/* "$dir/rootfs"/usr/share/man/* "$dir/rootfs"/usr/share/info/* \
    "$dir/rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED "$dir/rootfs/etc/resolv.conf" "$dir/rootfs/etc/hostname"
  tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -C "$dir/rootfs" -cf "$dir/rootfs.tar.tmp" .
  mv "$dir/rootfs.tar.tmp" "$dir/rootfs.tar"
  rm -rf "$dir/rootfs"
  trap - EXIT
  log "base rootfs $(du -h "$dir/rootfs.tar" | cut -f1) in $(since "$t")"
}

base_image() {  # -> prints the base image's name; builds what is missing
  local key dir ctr
  key=$(printf '%s\n' "$suite" "$mirror" "$base_packages" "$(declare -f make_rootfs)" | sha256sum | cut -c1-16)
  dir=$cache/base/$key
  [ -f "$dir/rootfs.tar" ] || make_rootfs "$dir"
  if ! bah inspect --type image "localhost/orpheus-tts-base:$key" >/dev/null 2>&1; then
    ctr=$(bah from --pull-never scratch)
    bah add "$ctr" "$dir/rootfs.tar" / >&2
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
      --cmd python3 "$ctr" >&2
    bah commit --rm "$ctr" "localhost/orpheus-tts-base:$key" >&2
  fi
  echo "localhost/orpheus-tts-base:$key"
}

# --- the project's images --------------------------------------------------------------------------------------
# Bump when the `buildah build` or `buildah push` commands below change what an image or its archive holds (this
# script's other edits do not).
recipe=2
inputs_hash() {  # DOCKERFILE BASE_IMAGE_ID -> tag: the recipe, the base and every file the build context may hold
  (
    cd "$root"
    echo "$recipe $1 $2"
    find images requirements runtime operator pyproject.toml README.md .dockerignore -type f ! -name build.sh \
      ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}

# Intermediate images (buildah --layers keeps one per step, for its cache) that no named image is built on: the
# steps of earlier builds. Without this, every change to an early step would leave its layers (GBs for the torch
# requirements) in the storage for good.
prune_intermediates() {
  local id name diff keep images named=()
  layers() { bah inspect --type image --format '{{range .OCIv1.RootFS.DiffIDs}}{{.}} {{end}}' "$1"; }
  images=$(bah images --all --noheading --format '{{.ID}} {{.Name}}')
  while read -r id name; do
    [ "$name" = "<none>" ] || named+=("$(layers "$id")")
  done <<<"$images"
  while read -r id name; do
    [ "$name" = "<none>" ] || continue
    # Kept when its layers begin a named image's layers: a step of a current build, which the next build reuses.
    diff=$(layers "$id")
    keep=0
    for n in "${named[@]}"; do [[ $n == "$diff"* ]] && { keep=1; break; }; done
    [ $keep = 1 ] || bah rmi "$id" >/dev/null 2>&1 || true  # in use by a working container: next time
  done <<<"$images"
}

# A build that runs out of disk fails deep inside buildah (exit 125, "no space left on device"); say so up front.
need_disk() {  # GB WHAT
  local free
  free=$(df -P -BG "$cache" | awk 'NR == 2 { print $4 + 0 }')
  if [ "$free" -lt "$1" ]; then
    log "only $free GB free under $cache; building $2 needs about $1 GB (its layers and its archive)"
    exit 3
  fi
}

build_image() {  # NAME DOCKERFILE REPOSITORY BASE DISK_GB -> prints NAME_image= and NAME_archive=
  local name=$1 dockerfile=$2 repo=$3 base=$4 tag ref archive t
  tag=$(inputs_hash "$dockerfile" "$(bah inspect --type image --format '{{.FromImageID}}' "$base")")
  ref=$repo:$tag
  archive=$cache/archives/${repo##*/}-$tag.tar
  if ! bah inspect --type image "$ref" >/dev/null 2>&1; then
    t=$SECONDS
    need_disk "$5" "$ref"
    log "building $ref from $dockerfile"
    local secret=()
    [ -n "${PIP_CERT:-}" ] && secret=(--secret "id=pip-ca,src=$PIP_CERT")
    local build=(bah build --layers --pull-never --runtime /usr/sbin/runc --network host "${secret[@]}"
      --build-arg "BASE=$base" -f "$root/$dockerfile" -t "$ref" "$root") rc=0
    "${build[@]}" >&2 || rc=$?
    if [ $rc = 125 ]; then
      # 125 is buildah's own failure, not a RUN step's (those exit 1): its storage, a mount, the disk. CI once hit
      # one that the next build in the same run did not; try once more, after freeing what earlier builds left.
      log "buildah failed (exit 125, its error is above); pruning old intermediate images and retrying once"
      prune_intermediates
      rc=0
      "${build[@]}" >&2 || rc=$?
    fi
    if [ $rc != 0 ]; then
      log "FAILED: buildah build of $ref from $dockerfile exited $rc (its error is above)"
      exit $rc
    fi
    log "built $ref in $(since "$t")"
  fi
  # Older builds of this image go, under every name they carry (skaffold's tags too), with their archives: first,
  # so that the new archive never has to fit beside the old one.
  find "$cache/archives" -name "${repo##*/}-*.tar*" ! -name "${archive##*/}" -delete
  local current
  current=$(bah inspect --type image --format '{{.FromImageID}}' "$ref")
  bah images --no-trunc --noheading --format '{{.ID}}' --filter "reference=$repo" | sed 's/^sha256://' | sort -u |
    { grep -vxF "$current" || true; } |
    while read -r old; do bah rmi --force "$old" >/dev/null; done
  if [ ! -f "$archive" ]; then
    t=$SECONDS
    # Uncompressed: gzip of the multi-GB torch layer costs minutes, and containerd would only unpack it again. A
    # docker-archive (`docker save` format, which `ctr images import` reads like an OCI archive) keeps layers as
    # they are; buildah 1.28 gzips oci-archive layers even with --disable-compression (operator image: 4 s for
    # 344 MB uncompressed vs 23 s for 87 MB gzipped).
    bah push --quiet "$ref" "docker-archive:$archive.tmp:$ref" >&2
    mv "$archive.tmp" "$archive"
    log "wrote $archive ($(du -h "$archive" | cut -f1)) in $(since "$t")"
  fi
  if [ $skaffold = 1 ]; then
    bah tag "$ref" "$IMAGE"
  fi
  if [ -n "${ORPHEUS_CONTAINERD_ADDRESS:-}" ]; then
    local ctr=("${ORPHEUS_CTR:-ctr}" --address "$ORPHEUS_CONTAINERD_ADDRESS" -n k8s.io)
    if ! "${ctr[@]}" images ls -q "name==$ref" | grep -qxF "$ref"; then
      t=$SECONDS
      "${ctr[@]}" images import "$archive" >&2
      log "imported $ref into containerd ($ORPHEUS_CONTAINERD_ADDRESS) in $(since "$t")"
    fi
    if [ $skaffold = 1 ]; then
      # The names skaffold uses: its tag, and (push: false) repository:<image ID>, the name it deploys. More names
      # for the same image, no second import.
      local id
      id=$(bah inspect --type image --format '{{.FromImageID}}' "$ref")
      "${ctr[@]}" images tag --force "$ref" "$IMAGE" "$repo:$id" >&2
    fi
  fi
  echo "${name}_image=$ref"
  echo "${name}_archive=$archive"
}

start=$SECONDS
base=$(base_image)
for name in "${names[@]}"; do
  case $name in
    operator) build_image operator images/operator.Dockerfile localhost/orpheus-tts-operator "$base" 2 ;;
    torch) build_image torch images/runtime-torch.Dockerfile localhost/orpheus-tts-torch "$base" 7 ;;
    *) echo "unknown image: $name (operator, torch)" >&2; exit 2 ;;
  esac
done
prune_intermediates
log "done in $(since "$start")"
