#!/usr/bin/env bash
# Creates (once) and activates the project's virtual environment. Sourced by the Makefile targets.
# The venv lives outside the checkout, keyed by the hash of the pinned requirements, so a fresh clone
# on the same machine reuses it and torch (several GB with its CUDA libraries) is installed only once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
key=$(cat "$root"/requirements/*.txt | sha256sum | cut -c1-12)
venv=$cache/venv-$key
mkdir -p "$cache"
exec 9>"$cache/.venv.lock"
flock 9  # concurrent make targets wait for one install instead of racing
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "==> creating $venv (first run downloads torch, a few minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip==26.3
  "$venv/bin/pip" install -q -r "$root/requirements/dev.txt"
  touch "$venv/.complete"
fi
# The project itself is installed editable on every run: cheap, and keeps entry points current.
out=$("$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" 2>&1) || { echo "$out" >&2; exit 1; }
flock -u 9
export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
