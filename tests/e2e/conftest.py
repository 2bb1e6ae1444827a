"""Fixtures of the end-to-end suite: one real single-node cluster per session (cluster.py), torn down even when a
test fails, and a report of the cluster's state (events, descriptions, logs) attached to every failed test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from e2e.cluster import Cluster, leftovers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the e2e cluster needs root on Linux (bridges, routes, iptables, mounts)")
    c = Cluster().up()
    try:
        yield c
    finally:
        problems = c.down() + leftovers()
        if problems:
            pytest.fail("cluster teardown left: " + "; ".join(problems))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        cluster = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(cluster, Cluster):
            try:
                report.sections.append(("cluster state at the failure", cluster.diagnostics()))
            except Exception as e:  # a report must never hide the failure it explains
                report.sections.append(("cluster state at the failure", f"could not collect: {e!r}"))
    return report
