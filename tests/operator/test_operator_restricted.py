"""Defect 2 of issue 11: every pod the operator creates is admitted in a namespace that enforces the `restricted`
Pod Security Standard. This control plane also runs the Job, Deployment and ReplicaSet controllers, so the pods
are really created (and admitted or refused) by them; there is no scheduler or kubelet, so they stay Pending."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from k8s.control_plane import ControlPlane, build_binaries
from kubernetes import client
from kubernetes.client.rest import ApiException
from operator_harness import TINY, Cluster, merge, now, wait_for

from orpheus_operator import crd

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def kube() -> Iterator[ControlPlane]:
    plane = ControlPlane(
        bin_dir=build_binaries(),
        controllers="garbagecollector,namespace,serviceaccount,job,deployment,replicaset,resourcequota",
    ).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(kube: ControlPlane) -> Iterator[str]:
    name = f"r-{uuid.uuid4().hex[:8]}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        wait_for(lambda: _has_default_sa(core, name), what="the namespace's default ServiceAccount")
        try:
            yield name
        finally:
            core.delete_namespace(name)


def _has_default_sa(core: client.CoreV1Api, ns: str) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(ns).items)


def pods_of(cluster: Cluster, selector: str) -> list[Any]:
    return cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items


def failed_creates(cluster: Cluster) -> list[str]:
    events = cluster.core.list_namespaced_event(cluster.ns).items
    return [
        f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}" for e in events if e.reason == "FailedCreate"
    ]


def test_operand_pods_are_admitted_under_restricted(cluster: Cluster, run_operator: Any) -> None:
    run_operator()
    with contextlib.suppress(ApiException):  # the RuntimeClass admission plugin wants it to exist
        client.NodeV1Api(cluster.api).create_runtime_class({"metadata": {"name": "nvidia"}, "handler": "nvidia"})
    # A GPU build and GPU servers (the ReadWriteOnce default: engine store, init container), as in production.
    spec = merge(TINY, {"runtime": {"gpus": 1, "replicas": 2, "runtimeClassName": "nvidia"}, "build": {"gpus": 1}})
    cluster.create("voice", spec)
    cluster.wait_phase("voice", "Building")
    job = cluster.jobs("voice")[0]["metadata"]["name"]
    wait_for(lambda: pods_of(cluster, f"job-name={job}"), what=f"the Job controller to create {job}'s pod")
    store = f"{crd.INSTANCE_LABEL}=voice,{crd.COMPONENT_LABEL}={crd.ENGINE_STORE}"
    wait_for(lambda: pods_of(cluster, store), what="the engine store's pod")

    succeed(cluster, job)
    servers = f"{crd.INSTANCE_LABEL}=voice,{crd.COMPONENT_LABEL}={crd.SERVER}"
    wait_for(lambda: len(pods_of(cluster, servers)) == 2, what="the ReplicaSet controller to create 2 server pods")
    assert not failed_creates(cluster)
    (pod,) = pods_of(cluster, f"job-name={job}")
    assert pod.spec.security_context.fs_group == 10001 and pod.spec.security_context.run_as_user == 10001


def succeed(cluster: Cluster, job: str) -> None:
    """What the kubelet reports when the build exits 0; the real Job controller then completes the Job."""
    (pod,) = pods_of(cluster, f"job-name={job}")
    t = now()
    terminated = {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t}
    status = {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": "build",
                "image": pod.spec.containers[0].image,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, cluster.ns, {"status": status})


def test_a_refused_pod_is_reported_within_a_minute(cluster: Cluster, run_operator: Any) -> None:
    """An override that breaks `restricted`: the build is Pending with the API's reason, not Building."""
    run_operator()
    cluster.create("voice", merge(TINY, {"runtime": {"securityContext": {"allowPrivilegeEscalation": True}}}))
    st = wait_for(
        lambda: cluster.status("voice") if cluster.status("voice").get("phase") == "Pending" else None,
        timeout=60,
        what="phase Pending",
    )
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "FailedCreate" and "violates PodSecurity" in degraded["message"], degraded


def test_a_rollout_whose_pods_are_refused_is_degraded(cluster: Cluster, run_operator: Any) -> None:
    """A quota that admits the build but no server pod: the Deployment's ReplicaFailure shows up as Degraded."""
    cluster.core.create_namespaced_resource_quota(
        cluster.ns, {"metadata": {"name": "no-gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}}
    )
    wait_for(
        lambda: cluster.core.read_namespaced_resource_quota("no-gpus", cluster.ns).status.hard,
        what="the quota controller to compute the quota",
    )
    run_operator()
    cluster.create("voice", merge(TINY, {"runtime": {"gpus": 1}}))  # the build takes no GPU, the servers one each
    cluster.wait_phase("voice", "Building")
    job = cluster.jobs("voice")[0]["metadata"]["name"]
    wait_for(lambda: pods_of(cluster, f"job-name={job}"), what="the build pod")
    succeed(cluster, job)
    st = wait_for(
        lambda: cluster.status("voice") if _degraded(cluster.status("voice"))[0] == "True" else None,
        timeout=60,
        what="Degraded",
    )
    reason, message = _degraded(st)[1:]
    assert reason == "FailedCreate" and "exceeded quota" in message, (reason, message)
    assert st["phase"] == "Deploying"


def _degraded(st: dict) -> tuple[str, str, str]:
    for c in st.get("conditions") or []:
        if c["type"] == "Degraded":
            return c["status"], c["reason"], c.get("message", "")
    return "", "", ""
