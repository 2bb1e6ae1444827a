"""The contracts between the operator and the runtime, tied: each test reads both sides' own code.

The operator's image does not ship the runtime package (images/operator.Dockerfile), so the operator keeps copies
of what it must know about the runtime (exit codes, the progress line, env names, flags, routes); these tests fail
when a copy and its home drift apart. docs/architecture.md ("Contracts and their homes") lists each contract.
"""

from __future__ import annotations

from orpheus_operator import buildstate
from orpheus_tts.build.exit_codes import ExitCode

# The kernel's, not build-engine's: 128 + SIGKILL (the OOM killer, a deadline).
KILLED = 137


def test_every_build_exit_code_has_a_reason_in_the_operator() -> None:
    failures = {code for code in ExitCode if code != ExitCode.OK}
    assert failures <= set(buildstate.EXIT_REASONS), sorted(failures - set(buildstate.EXIT_REASONS))
    # and the operator names no code the build commands do not have
    assert set(buildstate.EXIT_REASONS) - {KILLED} == failures
