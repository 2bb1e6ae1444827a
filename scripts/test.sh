#!/usr/bin/env bash
# The project's one test command (`make test`, and `.ci/run`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
source scripts/env.sh
echo "==> ruff"
ruff check .
echo "==> building the test control plane (cached after the first run)"
bash tests/k8s/build.sh
echo "==> pytest"
python -m pytest -q -ra "$@"
