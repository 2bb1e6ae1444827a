"""Fixtures of the operator's integration tests: the admin client with the CRD installed, an admin view of the
test namespace, and operators started under the chart's RBAC. They use the `kube` and `namespace` fixtures, which a
test module may override (test_operator_restricted.py runs its own control plane)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from operator_harness import GROUP, PLURAL, VERSION, Cluster, OperatorProcess, install_crd, install_rbac, wait_for


@pytest.fixture(scope="module")
def admin(kube: Any) -> Iterator[client.ApiClient]:
    with kube.api_client() as api:
        install_crd(api)
        yield api


@pytest.fixture
def cluster(admin: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(admin, namespace)


@pytest.fixture
def run_operator(kube: Any, admin: client.ApiClient, namespace: str, tmp_path: pathlib.Path) -> Iterator[Any]:
    """Starts operators under the chart's RBAC: namespaced (a Role in the test namespace) or cluster-wide."""
    started: list[OperatorProcess] = []
    docs: list[dict] = []

    def start(clusterwide: bool = False) -> OperatorProcess:
        watch = [] if clusterwide else [namespace]
        if not docs:
            docs.extend(install_rbac(kube, admin, f"op-{namespace}", namespace, watch))
        sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        proc = OperatorProcess(kube.service_account_kubeconfig(namespace, sa), tmp_path / "operator.log", watch)
        started.append(proc)  # stopped by the fixture even if it never becomes healthy
        return proc.start()

    yield start
    # The operator puts no finalizer on its resources: they go whether or not an operator still runs.
    custom = client.CustomObjectsApi(admin)
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, item["metadata"]["name"])
    try:
        wait_for(
            lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
            what="the test's resources deleted",
        )
    finally:
        for proc in started:
            proc.stop()
    rbac = client.RbacAuthorizationV1Api(admin)
    for doc in docs:  # namespaced ones go with the namespace
        if doc["kind"] == "ClusterRoleBinding":
            rbac.delete_cluster_role_binding(doc["metadata"]["name"])
        elif doc["kind"] == "ClusterRole":
            rbac.delete_cluster_role(doc["metadata"]["name"])
    log = tmp_path / "operator.log"
    if log.exists():
        print("---- operator log (tail) ----\n" + "\n".join(log.read_text().splitlines()[-80:]))
