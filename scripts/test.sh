#!/usr/bin/env bash
# The project's one test command (`make test`, and `.ci/run`): lint, then every test, the end-to-end suite on a
# real single-node cluster (tests/e2e, root only) included. `make test ARGS="-m 'not e2e'"` leaves it out (with
# ARGS, one pytest run with those arguments).
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
pytest=(python -m pytest -q -ra --durations=15)
if [ $# -gt 0 ] || [ "$(id -u)" != 0 ]; then
  echo "==> pytest"
  exec "${pytest[@]}" "$@"
fi

# Every test, in two pytest runs at once: the end-to-end suite (one real cluster, mostly waiting on the kubelet and
# its pods: about a third of a core) in the background, everything else in the foreground. On CI's two cores this
# takes the e2e suite's ~8 minutes off the wall time. They share nothing but the image builds (images/build.sh
# takes a lock; the second finds the images cached) and the machine's cores.
e2e_log=$(mktemp /tmp/orpheus-e2e-XXXXXX.log)
echo "==> pytest: the end-to-end suite in the background (its report follows the rest's; log: $e2e_log)"
"${pytest[@]}" -p no:cacheprovider -m e2e tests/e2e >"$e2e_log" 2>&1 &
e2e=$!
# Interrupted: let the e2e run tear its cluster down (its fixture does, on SIGINT) before this script goes.
trap 'kill -INT $e2e 2>/dev/null; wait $e2e; exit 130' INT TERM
echo "==> pytest: everything else"
rc=0
"${pytest[@]}" -m "not e2e" || rc=$?
e2e_rc=0
wait $e2e || e2e_rc=$?
trap - INT TERM
echo "==> pytest: the end-to-end suite (ran alongside)"
cat "$e2e_log"
rm -f "$e2e_log"
echo "==> pytest: everything else exited $rc, the end-to-end suite $e2e_rc"
[ $rc = 0 ] && [ $e2e_rc = 0 ]
