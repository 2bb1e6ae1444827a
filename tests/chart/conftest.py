"""Fixtures for the chart tests: the chart's path, and helm without a cluster (lint, template)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml
from k8s.control_plane import build_binaries, run_helm
from k8s.waiting import wait_for

from chart.support import CHART, KUBE_VERSION


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., object]:
    """helm(*args, check=True) -> CompletedProcess, with no cluster behind it."""
    binary = build_binaries() / "helm"
    home = tmp_path_factory.mktemp("helm-home")

    def run(*args: str, check: bool = True):
        return run_helm(binary, args, home=home, check=check)

    return run


@pytest.fixture(scope="session")
def render(helm) -> Callable[..., list[dict]]:
    """render(*helm_template_args) -> the rendered objects (tests hooks included)."""

    def run(*args: str, release: str = "t", namespace: str = "tts") -> list[dict]:
        out = helm(
            "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *args
        ).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return run


@pytest.fixture(scope="session")
def crd(kube) -> dict:
    """The chart's CRD, installed once per session (as `helm install` would) and Established."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    body = yaml.safe_load((CHART / "crds" / "orpheustts.yaml").read_text())
    with kube.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as e:
            if e.status != 409:  # another test (or helm) installed it already
                raise
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
            ),
            timeout=60,
            what="the CRD to be Established",
        )
    return body
