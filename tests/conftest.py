"""Fixtures shared by every test directory: the `kube` test control plane (see tests/k8s/control_plane.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from k8s.control_plane import ControlPlane, build_binaries


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from container_images.oci import BUILD_FAILURES

    for failure in BUILD_FAILURES:
        terminalreporter.section("images/build.sh failed", sep="-", red=True)
        terminalreporter.write_line(failure)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that uses the control plane is a k8s test, marked or not, so `-m "not k8s"` deselects it.
    for item in items:
        if "kube" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="session")
def kube() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager (garbagecollector, namespace) on loopback.

    Builds the binaries first if they are not cached (tests/k8s/build.sh) and fails loudly if that fails.
    """
    plane = ControlPlane(bin_dir=build_binaries()).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(kube: ControlPlane) -> Iterator[str]:
    """A fresh namespace, deleted (through the namespace controller) after the test."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        try:
            yield name
        finally:
            core.delete_namespace(name)
