#!/usr/bin/env bash
# `make dev`: skaffold's dev loop, profile `cpu`, against a running cluster whose node runs containerd (the e2e
# harness's single node, or yours): images/build.sh builds the operator and PyTorch images with buildah and loads
# them into the node's containerd; skaffold installs the chart (tiny random model, no GPU) and forwards the endpoint
# to 127.0.0.1:8000; edits to runtime/orpheus_tts/*.py are synced into the running pod's /app, other edits rebuild.
#
# Needs: root (buildah), KUBECONFIG for the cluster, kubectl on PATH (skaffold syncs files with `kubectl exec`), and
#   ORPHEUS_CONTAINERD_ADDRESS  the node's containerd socket (images are imported into its k8s.io namespace)
#   ORPHEUS_CTR                 optional: the ctr binary to use (default: ctr on PATH)
# Extra arguments go to `skaffold dev` (e.g. --tail=false).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KUBECONFIG:?set KUBECONFIG to the cluster kubeconfig}"
: "${ORPHEUS_CONTAINERD_ADDRESS:?set ORPHEUS_CONTAINERD_ADDRESS to the node containerd socket}"
command -v kubectl >/dev/null || { echo "kubectl is not on PATH" >&2; exit 1; }
skaffold=$(bash tests/k8s/build-skaffold.sh | tail -1)
helm_dir=$(bash tests/k8s/build.sh | tail -1)  # skaffold's helm deployer runs `helm`
export PATH=$helm_dir:$PATH SKAFFOLD_UPDATE_CHECK=false
# skaffold's local builder asks a Docker API about the images it built: podman serves one on buildah's storage.
api=$(mktemp -d)/docker.sock
bash images/build.sh --docker-api "$api" &
podman_pid=$!
trap 'kill $podman_pid 2>/dev/null; wait $podman_pid 2>/dev/null; rm -rf "$(dirname "$api")"' EXIT
for _ in $(seq 150); do [ -S "$api" ] && break; sleep 0.2; done
export DOCKER_HOST=unix://$api
# --no-prune: on exit skaffold would delete the images it built from build.sh's storage, and the layer cache with them.
"$skaffold" dev -p cpu --config scripts/skaffold-global-config.yaml --port-forward=user --cache-artifacts=false \
  --no-prune "$@"
