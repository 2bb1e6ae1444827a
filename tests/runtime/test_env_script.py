"""scripts/env.sh (issue 13, item 7): safe to source from an interactive shell, and each checkout imports its own
code (the shared dependency venv is never re-pointed at another clone)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_env_script_keeps_shell_options_and_imports_this_checkout():
    script = f"""
        before="$-|$(set -o | grep -E '^(errexit|nounset|pipefail) ' | tr -s ' ')"
        source {ROOT}/scripts/env.sh || echo "env.sh failed"
        after="$-|$(set -o | grep -E '^(errexit|nounset|pipefail) ' | tr -s ' ')"
        [ "$before" = "$after" ] && echo "options kept" || echo "options changed: $before -> $after"
        python -c 'import orpheus_tts; print(orpheus_tts.__file__)'
        false | true; echo "still running"
    """
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600).stdout.splitlines()
    assert "options kept" in out, out
    assert out[-1] == "still running", out
    assert out[-2].startswith(str(ROOT / "runtime" / "orpheus_tts")), out
