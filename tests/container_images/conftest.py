"""The images, built once per session by images/build.sh (cached by input hash: seconds when nothing changed)."""

from __future__ import annotations

import time

import pytest

from container_images.oci import build_images


@pytest.fixture(scope="session")
def built() -> dict[str, str]:
    """operator_image, operator_archive, torch_image, torch_archive (and build_seconds, this session's build)."""
    start = time.monotonic()
    out = build_images()
    out["build_seconds"] = f"{time.monotonic() - start:.1f}"
    return out
