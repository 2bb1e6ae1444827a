"""The exit codes of the build commands (`build-engine`, `download`, `make-calibration`, `doctor`): one home.

The build Job's exit code is how the operator tells a person what went wrong: it maps each code to a status
reason (operator/orpheus_operator/buildstate.py EXIT_REASONS; the operator image does not ship this package,
so tests/test_contracts.py ties the two). Scripts may treat every command's codes alike. Torch-free.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # anything not named below: the message says what
    USAGE = 2  # invalid arguments or environment
    AUTH = 3  # the hub refused the token (gated repo, no HF_TOKEN)
    NOT_FOUND = 4  # no such repo or revision
    DISK_FULL = 5
    NO_GPU = 6
    GPU_UNSUPPORTED = 7  # the quantization needs another GPU generation
    LOCKED = 8  # another build holds `<out>.lock` (without --wait)
    NETWORK = 9  # the hub could not be reached
    NO_TRTLLM = 10  # TensorRT-LLM missing or not loadable in this image
    ENGINE_MISMATCH = 11  # `doctor --engine-dir`: incomplete, or built for another GPU / versions
