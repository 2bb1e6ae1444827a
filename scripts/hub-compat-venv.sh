#!/usr/bin/env bash
# A small venv with huggingface_hub 0.3x (tests/runtime/hub_compat/requirements.txt), for the hub error
# mapping tests: NVIDIA's TensorRT-LLM image has 0.3x, CI's main venv 1.x. Created once per requirements
# hash under the shared cache (flock: concurrent callers wait), then reused. Prints its python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req=$root/tests/runtime/hub_compat/requirements.txt
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
venv=$cache/hub-compat-$(sha256sum "$req" | cut -c1-12)
mkdir -p "$cache"
exec 9>"$cache/.hub-compat.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
