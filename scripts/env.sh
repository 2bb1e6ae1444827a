# Creates (once) and activates the project's Python environment. Sourced by the Makefile targets and safe to
# source from an interactive shell: it changes no shell options and returns (never exits) on failure.
#
# Two layers, so that two clones on one machine never import each other's code:
# - the dependencies (torch is several GB) live in one venv outside the checkout, keyed by the hash of the pinned
#   requirements, shared by every clone;
# - each checkout has its own small venv in .venv/ that sees the shared packages through a .pth file and holds only
#   this checkout's editable install and entry points (orpheus-tts, orpheus-operator).
_orpheus_env() {
  local root cache key deps site overlay py
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
  cache=${ORPHEUS_CACHE:-$HOME/.cache/orpheus-tts}
  key=$(cat "$root"/requirements/*.txt | sha256sum | cut -c1-12)
  deps=$cache/venv-$key
  overlay=$root/.venv
  mkdir -p "$cache" || return 1
  (
    set -euo pipefail
    exec 9>"$cache/.venv.lock"
    flock 9  # concurrent make targets and clones wait for one install instead of racing
    if [ ! -x "$deps/bin/python" ] || [ ! -f "$deps/.complete" ]; then
      echo "==> creating $deps (first run downloads torch, a few minutes)" >&2
      rm -rf "$deps"
      python3 -m venv "$deps"
      "$deps/bin/pip" install -q --upgrade pip==26.3
      "$deps/bin/pip" install -q -r "$root/requirements/dev.txt"
      touch "$deps/.complete"
    fi
  ) || return 1
  py=$("$deps/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")') || return 1
  site=$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  if [ ! -x "$overlay/bin/python" ] || [ "$(cat "$overlay/.deps" 2>/dev/null)" != "$deps" ]; then
    rm -rf "$overlay"
    "$deps/bin/python" -m venv --without-pip "$overlay" || return 1
    echo "$site" >"$overlay/lib/$py/site-packages/_orpheus_shared_deps.pth"
    echo "$deps" >"$overlay/.deps"
  fi
  # Cheap, and keeps this checkout's entry points current. pip and setuptools come from the shared layer.
  local out
  out=$("$overlay/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1) || {
    echo "$out" >&2
    return 1
  }
  export VIRTUAL_ENV=$overlay PATH=$overlay/bin:$deps/bin:$PATH
}
_orpheus_env || { unset -f _orpheus_env; return 1 2>/dev/null || exit 1; }
unset -f _orpheus_env
