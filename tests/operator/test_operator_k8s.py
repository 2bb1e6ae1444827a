"""The operator against a real kube-apiserver (+ garbage collector), running as a subprocess under the chart's
ServiceAccount and RBAC. The tests play kubelet and the Job / Deployment controllers by patching status."""

from __future__ import annotations

import copy
import json
import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from crd_schema import defaulted_spec
from kubernetes import client
from kubernetes.client.rest import ApiException
from operator_harness import (
    GROUP,
    PLURAL,
    TINY,
    VERSION,
    OperatorProcess,
    build_pod,
    failed_build_pod,
    finish_job,
    install_crd,
    install_rbac,
    make_deployment_available,
    wait_for,
)

from orpheus_operator import crd, exposure, hashing
from orpheus_operator.config import OperatorConfig

CFG = OperatorConfig(runtime_image="example.test/orpheus-tts:1")


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def engine_hash(spec: dict) -> str:
    return hashing.engine_hash(hashing.build_spec(defaulted_spec(spec), CFG))


class Cluster:
    """Admin-side view of one test namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.custom = client.CustomObjectsApi(api)
        self.core, self.apps, self.batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)

    def create(self, name: str, spec: dict) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OrpheusTTS", "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def patch_spec(self, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def get(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def status(self, name: str) -> dict:
        return (self.get(name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict:
        return wait_for(
            lambda: self.status(name) if self.status(name).get("phase") == phase else None,
            timeout,
            what=f"{name} phase {phase} (status: {self.status(name)})",
        )

    def jobs(self, name: str) -> list[dict]:
        sel = f"{crd.INSTANCE_LABEL}={name},{crd.COMPONENT_LABEL}={crd.ENGINE_BUILD}"
        items = self.batch.list_namespaced_job(self.ns, label_selector=sel).items
        return [self.api.sanitize_for_serialization(j) for j in items]

    def job_names(self, name: str) -> list[str]:
        return sorted(j["metadata"]["name"] for j in self.jobs(name))

    def deployment(self, name: str) -> Any:
        try:
            return self.apps.read_namespaced_deployment(name, self.ns)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def env(self, name: str) -> dict[str, str]:
        dep = self.deployment(name)
        return {e.name: e.value for e in dep.spec.template.spec.containers[0].env}


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
    # Delete the resources while an operator still runs, so that kopf removes its finalizer and the namespace
    # can go; an operator that died leaves finalizers behind, which are removed by hand.
    custom = client.CustomObjectsApi(admin)
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        name = item["metadata"]["name"]
        if not any(p.proc is not None for p in started):
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": None}}
            )
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
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


def conditions(st: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st.get("conditions") or []}


# ---- the API server validates and defaults -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name", "expected"),
    [
        ({"engine": {"backend": "vllm"}}, "bad-enum", 'spec.engine.backend: Unsupported value: "vllm"'),
        ({"engine": {"maxBatchSize": -1}}, "neg", "spec.engine.maxBatchSize: Invalid value: -1"),
        ({"engine": {"backend": "torch"}}, "torch-awq", "engine.backend torch supports weightQuantization none"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minmax", "minReplicas must not exceed"),
        ({"ingress": {"enabled": True}}, "nohost", "ingress.host is required"),
        ({}, "x" * 41, "metadata.name must be a DNS-1035 label of at most 40 characters"),
    ],
)
def test_invalid_resources_are_rejected_readably(cluster: Cluster, spec: dict, name: str, expected: str) -> None:
    with pytest.raises(ApiException) as info:
        cluster.create(name, spec)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert expected in message, message


def test_api_server_defaults_match_the_unit_tests_defaulting(cluster: Cluster) -> None:
    created = cluster.create("defaults", {"model": {"hfTokenSecretRef": {"name": "hf"}}})
    assert created["spec"] == defaulted_spec({"model": {"hfTokenSecretRef": {"name": "hf"}}})


# ---- reconciliation ------------------------------------------------------------------------------------------


def test_lifecycle_build_deploy_patch_rebuild(cluster: Cluster, run_operator: Any) -> None:
    run_operator()
    cluster.create("voice", TINY)
    h1 = engine_hash(TINY)

    st = cluster.wait_phase("voice", "Building")
    assert st["engineHash"] == h1 and st["buildJob"] == f"voice-build-{h1}-1"
    assert conditions(st)["EngineBuilt"] == ("False", "Building")
    assert cluster.job_names("voice") == [f"voice-build-{h1}-1"]
    job = cluster.jobs("voice")[0]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["build-engine", "--backend"]
    pvc = cluster.core.read_namespaced_persistent_volume_claim("voice-engines", cluster.ns)
    assert not pvc.metadata.owner_references  # retainOnDelete defaults to true
    assert cluster.deployment("voice") is None  # nothing serves before the first engine exists

    finish_job(cluster.api, cluster.ns, f"voice-build-{h1}-1", succeeded=True)
    st = cluster.wait_phase("voice", "Deploying")
    assert conditions(st)["EngineBuilt"] == ("True", "Built")
    dep = cluster.deployment("voice")
    assert dep.metadata.owner_references[0].kind == "OrpheusTTS"
    assert cluster.env("voice")["TRTLLM_ENGINE_DIR"] == f"/engines/{h1}"
    assert cluster.core.read_namespaced_service("voice", cluster.ns).spec.ports[0].port == 8000
    client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget("voice", cluster.ns)

    make_deployment_available(cluster.api, cluster.ns, "voice")
    st = cluster.wait_phase("voice", "Ready")
    assert st["readyReplicas"] == 1 and st["endpoint"] == f"http://voice.{cluster.ns}.svc:8000"
    assert conditions(st) == {
        "EngineBuilt": ("True", "Built"),
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert st["observedGeneration"] == cluster.get("voice")["metadata"]["generation"]

    # Runtime-only change: patched in place, no new build.
    cluster.patch_spec(
        "voice",
        {
            "runtime": {"replicas": 2},
            "snac": {"maxBatch": 32},
            "ingress": {"enabled": True, "host": "tts.example.test", "preset": "nginx"},  # issue #12: presets
        },
    )
    wait_for(lambda: cluster.deployment("voice").spec.replicas == 2, what="replicas patched")
    assert cluster.env("voice")["SNAC_MAX_BATCH"] == "32"
    net = client.NetworkingV1Api(cluster.api)
    ingress = wait_for(lambda: _read_or_none(net.read_namespaced_ingress, "voice", cluster.ns), what="ingress")
    # issue #12: the preset's timeout is never below the longest utterance the engine limits allow.
    timeout = exposure.stream_timeout_seconds(cluster.get("voice")["spec"])
    assert ingress.metadata.annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == str(timeout)
    make_deployment_available(cluster.api, cluster.ns, "voice")
    st = cluster.wait_phase("voice", "Ready")
    assert st["endpoint"] == "http://tts.example.test/" and st["readyReplicas"] == 2
    assert cluster.job_names("voice") == [f"voice-build-{h1}-1"]

    # Build-relevant change: a new engine builds while the old pods keep serving, then the Deployment rolls.
    changed = merge(TINY, {"engine": {"maxBatchSize": 8}})
    h2 = engine_hash(changed)
    cluster.patch_spec("voice", {"engine": {"maxBatchSize": 8}, "ingress": {"enabled": False}})
    st = cluster.wait_phase("voice", "Building")
    assert st["engineHash"] == h2 and st["servingEngineHash"] == h1
    assert conditions(st)["Available"] == ("True", "MinimumReplicasAvailable")
    assert f"voice-build-{h2}-1" in cluster.job_names("voice")
    env = cluster.env("voice")
    assert env["TRTLLM_ENGINE_DIR"] == f"/engines/{h1}" and env["TRTLLM_MAX_BATCH_SIZE"] == "20"
    wait_for(lambda: _read_or_none(net.read_namespaced_ingress, "voice", cluster.ns) is None, what="ingress removed")

    finish_job(cluster.api, cluster.ns, f"voice-build-{h2}-1", succeeded=True)
    cluster.wait_phase("voice", "Deploying")
    env = cluster.env("voice")
    assert env["TRTLLM_ENGINE_DIR"] == f"/engines/{h2}" and env["TRTLLM_MAX_BATCH_SIZE"] == "8"
    make_deployment_available(cluster.api, cluster.ns, "voice")
    st = cluster.wait_phase("voice", "Ready")
    assert st["servingEngineHash"] == h2
    wait_for(lambda: cluster.job_names("voice") == [f"voice-build-{h2}-1"], what="the old engine's Job removed")


def test_failed_build_reports_why_retries_and_recovers(cluster: Cluster, run_operator: Any) -> None:
    run_operator()
    spec = merge(TINY, {"model": {"repo": "canopylabs/orpheus-3b-0.1-ft", "hfTokenSecretRef": {"name": "hf"}}})
    cluster.create("voice", spec)
    h = engine_hash(spec)
    cluster.wait_phase("voice", "Building")
    job = cluster.jobs("voice")[0]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}

    failed_build_pod(
        cluster.api,
        cluster.ns,
        job,
        exit_code=3,
        message="hub: canopylabs/orpheus-3b-0.1-ft needs a valid HF_TOKEN (401 unauthorised)",
    )
    finish_job(cluster.api, cluster.ns, f"voice-build-{h}-1", succeeded=False)
    st = cluster.wait_phase("voice", "Failed")
    assert conditions(st)["EngineBuilt"] == ("False", "HubUnauthorized")
    assert conditions(st)["Degraded"] == ("True", "HubUnauthorized")
    assert "needs a valid HF_TOKEN (401 unauthorised) (exit code 3" in st["message"]

    # Retried with backoff (2 s in this test): a second attempt of the same engine.
    wait_for(lambda: f"voice-build-{h}-2" in cluster.job_names("voice"), what="a retry Job")
    cluster.wait_phase("voice", "Building")
    wait_for(lambda: cluster.job_names("voice") == [f"voice-build-{h}-2"], what="the failed attempt removed")

    # A fixed spec builds a new engine, and the failed one's Jobs go.
    cluster.patch_spec("voice", {"model": {"repo": "unsloth/orpheus-3b-0.1-ft"}})
    fixed = engine_hash(merge(spec, {"model": {"repo": "unsloth/orpheus-3b-0.1-ft"}}))
    wait_for(lambda: cluster.job_names("voice") == [f"voice-build-{fixed}-1"], what="only the fixed spec's Job")
    finish_job(cluster.api, cluster.ns, f"voice-build-{fixed}-1", succeeded=True)
    cluster.wait_phase("voice", "Deploying")
    make_deployment_available(cluster.api, cluster.ns, "voice")
    st = cluster.wait_phase("voice", "Ready")
    assert conditions(st)["Degraded"] == ("False", "AsExpected")


def test_autoscaler_follows_the_spec(cluster: Cluster, run_operator: Any) -> None:
    run_operator()
    cluster.create(
        "voice",
        merge(
            TINY,
            {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5, "targetActiveStreamsPerPod": 12}},
        ),
    )
    cluster.wait_phase("voice", "Building")
    finish_job(cluster.api, cluster.ns, cluster.job_names("voice")[0], succeeded=True)
    scaling = client.AutoscalingV2Api(cluster.api)
    hpa = wait_for(
        lambda: _read_or_none(scaling.read_namespaced_horizontal_pod_autoscaler, "voice", cluster.ns), what="the HPA"
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    metric = hpa.spec.metrics[0].pods
    assert metric.metric.name == "orpheus_active_streams" and metric.target.average_value == "12"
    managed = cluster.apps.read_namespaced_deployment("voice", cluster.ns).metadata.managed_fields
    operator_fields = [m.fields_v1 for m in managed if m.manager == crd.FIELD_MANAGER]
    assert operator_fields and all("f:replicas" not in f.get("f:spec", {}) for f in operator_fields)

    cluster.patch_spec("voice", {"autoscaling": {"enabled": False}, "runtime": {"replicas": 3}})
    wait_for(
        lambda: _read_or_none(scaling.read_namespaced_horizontal_pod_autoscaler, "voice", cluster.ns) is None,
        what="the HPA removed",
    )
    wait_for(lambda: cluster.deployment("voice").spec.replicas == 3, what="replicas owned again")


def test_build_pod_that_cannot_start_is_pending(cluster: Cluster, run_operator: Any) -> None:
    run_operator()
    cluster.create("voice", merge(TINY, {"model": {"hfTokenSecretRef": {"name": "missing"}}}))
    cluster.wait_phase("voice", "Building")
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "missing" not found'}}
    build_pod(cluster.api, cluster.ns, cluster.jobs("voice")[0], waiting, phase="Pending")
    st = cluster.wait_phase("voice", "Pending")
    assert conditions(st)["Degraded"] == ("True", "CreateContainerConfigError")
    assert 'secret "missing" not found' in st["message"]


def test_operator_restart_mid_build_converges(cluster: Cluster, run_operator: Any) -> None:
    first = run_operator(clusterwide=True)
    cluster.create("voice", TINY)
    h = engine_hash(TINY)
    cluster.wait_phase("voice", "Building")
    first.stop(signal.SIGKILL)  # a crash: no clean shutdown
    finish_job(cluster.api, cluster.ns, f"voice-build-{h}-1", succeeded=True)

    run_operator(clusterwide=True)
    cluster.wait_phase("voice", "Deploying")
    make_deployment_available(cluster.api, cluster.ns, "voice")
    cluster.wait_phase("voice", "Ready")
    assert cluster.job_names("voice") == [f"voice-build-{h}-1"]  # no duplicate build


def test_delete_cleans_up_and_pvc_follows_retention(cluster: Cluster, run_operator: Any) -> None:
    run_operator()
    for name, retain in (("kept", True), ("gone", False)):
        cluster.create(name, merge(TINY, {"storage": {"retainOnDelete": retain}}))
    for name in ("kept", "gone"):
        cluster.wait_phase(name, "Building")
        finish_job(cluster.api, cluster.ns, cluster.job_names(name)[0], succeeded=True)
        wait_for(lambda n=name: cluster.deployment(n), what=f"{name}'s Deployment")
    for name in ("kept", "gone"):
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, name)
    for name in ("kept", "gone"):
        wait_for(lambda n=name: cluster.get(n) is None, what=f"{name} deleted (kopf removes its finalizer)")
        # The real garbage collector removes the owned children.
        wait_for(
            lambda n=name: (
                cluster.deployment(n) is None
                and not cluster.jobs(n)
                and _read_or_none(cluster.core.read_namespaced_service, n, cluster.ns) is None
            ),
            timeout=60,
            what=f"{name}'s children garbage-collected",
        )
    kept = cluster.core.read_namespaced_persistent_volume_claim("kept-engines", cluster.ns)
    assert kept.metadata.deletion_timestamp is None

    def gone_pvc_deleted() -> bool:
        pvc = _read_or_none(cluster.core.read_namespaced_persistent_volume_claim, "gone-engines", cluster.ns)
        # kubernetes.io/pvc-protection keeps a deleted claim until its controller (not run here) lets go.
        return pvc is None or pvc.metadata.deletion_timestamp is not None

    wait_for(gone_pvc_deleted, timeout=60, what="the non-retained PVC deleted")


def test_operator_service_account_cannot_read_secrets(kube: Any, namespace: str, run_operator: Any) -> None:
    proc = run_operator()
    with kube.api_client(proc.kubeconfig) as api:
        review = client.AuthorizationV1Api(api).create_self_subject_access_review(
            {"spec": {"resourceAttributes": {"namespace": namespace, "verb": "get", "resource": "secrets"}}}
        )
        assert review.status.allowed is False
        review = client.AuthorizationV1Api(api).create_self_subject_access_review(
            {
                "spec": {
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": "create",
                        "resource": "jobs",
                        "group": "batch",
                    }
                }
            }
        )
        assert review.status.allowed is True


def _read_or_none(read: Any, name: str, namespace: str) -> Any:
    try:
        return read(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


async def test_api_client_logs_in_again_after_401(kube: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Service account tokens rotate: on a 401 the client asks kopf's login for fresh credentials, once."""
    from orpheus_operator import kubeapi

    monkeypatch.setenv("KUBECONFIG", str(kube.admin_kubeconfig))
    calls: list[int] = []

    def login() -> Any:
        calls.append(1)
        conn = kubeapi.login()
        if len(calls) == 1:  # the first token is stale
            return kubeapi.kopf.ConnectionInfo(server=conn.server, ca_path=conn.ca_path, token="expired")
        return conn

    api = kubeapi.KubeApi(login)
    try:
        assert await api.get("v1", "Service", namespace, "nothing-here") is None
        assert len(calls) == 2
        with pytest.raises(kubeapi.ApiError) as info:
            await api.create(
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name", "namespace": namespace}}
            )
        assert info.value.status == 422 and "Bad_Name" in info.value.message
    finally:
        await api.close()
