"""Polling helpers: the test control plane's controllers (garbage collector, namespace) and the operator act
asynchronously, so tests wait for the state they expect instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Polls check() until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(0.2)


def gone(read: Callable[[], object]) -> bool:
    """True when read() answers 404."""
    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False
