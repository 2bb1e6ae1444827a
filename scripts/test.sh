#!/usr/bin/env bash
# The project's one test command (`make test`, and `.ci/run`): lint, then every test, the end-to-end suite on a
# real single-node cluster (tests/e2e, root only) included. `make test ARGS="-m 'not e2e'"` leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
source scripts/env.sh
echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy (runtime and operator packages; [tool.mypy] in pyproject.toml)"
# The cache outlives the checkout (CI clones afresh): mypy re-checks only files whose content changed.
mypy --cache-dir "${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}/mypy"
echo "==> building the test control plane (cached after the first run)"
bash tests/k8s/build.sh
echo "==> building the e2e node: kubelet, containerd, CoreDNS, Traefik, ... (cached after the first run)"
bash tests/k8s/build-node.sh
echo "==> pytest"
python -m pytest -q -ra --durations=15 "$@"
