"""The operator against a real kube-apiserver (+ garbage collector), running as a subprocess under the chart's
ServiceAccount and RBAC. The tests play kubelet and the Job / Deployment controllers by patching status."""

from __future__ import annotations

import json
import signal
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
    Cluster,
    build_pod,
    engine_hash,
    failed_build_pod,
    finish_job,
    make_deployment_available,
    merge,
    now,
    wait_for,
)

from orpheus_operator import crd, exposure


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
        "Ready": ("True", "Serving"),
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
        wait_for(lambda n=name: cluster.get(n) is None, what=f"{name} deleted (no finalizer holds it)")
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


# ---- issue 11: each defect against the real API server ----------------------------------------------------------


def _built_and_serving(cluster: Cluster, name: str, spec: dict) -> None:
    cluster.create(name, spec)
    cluster.wait_phase(name, "Building")
    finish_job(cluster.api, cluster.ns, cluster.job_names(name)[0], succeeded=True)
    wait_for(lambda: cluster.deployment(name), what=f"{name}'s Deployment")
    make_deployment_available(cluster.api, cluster.ns, name)
    cluster.wait_phase(name, "Ready")


def _stays(check: Any, seconds: float = 4.0) -> None:
    """check() holds for `seconds` (several resyncs of 1 s)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check()
        time.sleep(0.2)


def test_turning_autoscaling_on_and_off_never_changes_the_pod_count(cluster: Cluster, run_operator: Any) -> None:
    """Defect 1: enabling autoscaling set 8 running replicas to 1 before any HPA existed."""
    run_operator()
    _built_and_serving(cluster, "voice", merge(TINY, {"runtime": {"replicas": 8}}))
    assert cluster.deployment("voice").spec.replicas == 8

    cluster.patch_spec("voice", {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10}})
    scaling = client.AutoscalingV2Api(cluster.api)
    wait_for(lambda: _read_or_none(scaling.read_namespaced_horizontal_pod_autoscaler, "voice", cluster.ns), what="HPA")
    _stays(lambda: cluster.deployment("voice").spec.replicas == 8)

    # The HPA scales through the scale subresource; then autoscaling is switched off again.
    cluster.apps.patch_namespaced_deployment_scale("voice", cluster.ns, {"spec": {"replicas": 5}})
    cluster.patch_spec("voice", {"autoscaling": {"enabled": False}})
    wait_for(
        lambda: _read_or_none(scaling.read_namespaced_horizontal_pod_autoscaler, "voice", cluster.ns) is None,
        what="the HPA removed",
    )
    _stays(lambda: cluster.deployment("voice").spec.replicas == 5)  # the HPA's last count, not the spec's 8

    cluster.patch_spec("voice", {"runtime": {"replicas": 3}})  # the user sets a count: it applies
    wait_for(lambda: cluster.deployment("voice").spec.replicas == 3, what="the user's new count")


def test_no_finalizer_and_a_legacy_one_is_removed(cluster: Cluster, run_operator: Any) -> None:
    """Defect 3: a finalizer nobody needed stranded resources once helm uninstall removed the operator."""
    legacy = merge(TINY, {})
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OrpheusTTS",
        "metadata": {"name": "old", "finalizers": ["tts.orpheus.dev/operator"]},  # as operator 0.1.0 left it
        "spec": legacy,
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, body)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "old")
    assert cluster.get("old")["metadata"]["deletionTimestamp"]  # stuck, as after helm uninstall
    run_operator()
    cluster.create("voice", TINY)
    cluster.wait_phase("voice", "Building")
    assert not cluster.get("voice")["metadata"].get("finalizers")
    wait_for(lambda: cluster.get("old") is None, what="the stranded resource released")


def test_build_that_cannot_create_its_pod_says_why(cluster: Cluster, run_operator: Any) -> None:
    """Defect 2 (status side): a Job whose pod is refused shows the API's reason, not Building until the deadline.
    The Job controller's FailedCreate Event is what it leaves; here it is recorded as that controller does."""
    run_operator()
    cluster.create("voice", TINY)
    cluster.wait_phase("voice", "Building")
    job = cluster.jobs("voice")[0]
    message = (
        f'Error creating: pods "{job["metadata"]["name"]}-x" is forbidden: violates PodSecurity '
        '"restricted:latest": allowPrivilegeEscalation != false'
    )
    cluster.core.create_namespaced_event(
        cluster.ns,
        {
            "metadata": {"name": f"{job['metadata']['name']}.fc"},
            "involvedObject": {
                "kind": "Job",
                "apiVersion": "batch/v1",
                "name": job["metadata"]["name"],
                "namespace": cluster.ns,
                "uid": job["metadata"]["uid"],
            },
            "reason": "FailedCreate",
            "message": message,
            "type": "Warning",
            "source": {"component": "job-controller"},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        },
    )
    st = cluster.wait_phase("voice", "Pending")
    assert conditions(st)["Degraded"] == ("True", "FailedCreate")
    assert "violates PodSecurity" in st["message"]


def test_engine_follows_the_gpu(cluster: Cluster, run_operator: Any) -> None:
    """Defect 4: moving to H100 nodes rebuilds; a pod anti-affinity alone keeps the GPU requirement."""
    gpu = merge(TINY, {"engine": {"backend": "trtllm", "weightQuantization": "int4_awq", "kvCacheDtype": "int8"}})
    gpu["runtime"] = {"gpus": 1}
    gpu["build"] = {"gpus": 1}
    run_operator()
    _built_and_serving(cluster, "voice", gpu)
    a100 = engine_hash(gpu)
    assert cluster.status("voice")["servingEngineHash"] == a100

    anti = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}}}
            ]
        }
    }
    cluster.patch_spec("voice", {"gpu": {"computeCapability": "9.0"}, "runtime": {"affinity": anti}})
    h100 = engine_hash(merge(gpu, {"gpu": {"computeCapability": "9.0"}}))
    assert h100 != a100
    st = cluster.wait_phase("voice", "Building")
    assert st["engineHash"] == h100 and st["servingEngineHash"] == a100
    job = next(j for j in cluster.jobs("voice") if j["metadata"]["labels"][crd.HASH_LABEL] == h100)

    def gpu_terms(affinity: dict) -> list[dict]:
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        return [{e["key"]: e["values"] for e in t["matchExpressions"]} for t in terms]

    assert gpu_terms(job["spec"]["template"]["spec"]["affinity"]) == [
        {"nvidia.com/gpu.compute.major": ["9"], "nvidia.com/gpu.compute.minor": ["0"]}
    ]
    # The servers keep the A100 engine, and the A100 requirement, until the H100 engine is built.
    dep = cluster.apps.read_namespaced_deployment("voice", cluster.ns)
    affinity = cluster.api.sanitize_for_serialization(dep.spec.template.spec.affinity)
    assert gpu_terms(affinity) == [{"nvidia.com/gpu.compute.major": ["8"], "nvidia.com/gpu.compute.minor": ["0"]}]
    assert affinity["podAntiAffinity"]  # the user's part is kept
    finish_job(cluster.api, cluster.ns, job["metadata"]["name"], succeeded=True)
    wait_for(
        lambda: (
            gpu_terms(cluster.api.sanitize_for_serialization(cluster.deployment("voice").spec.template.spec.affinity))
            == [{"nvidia.com/gpu.compute.major": ["9"], "nvidia.com/gpu.compute.minor": ["0"]}]
        ),
        what="the servers moved to H100 nodes with the H100 engine",
    )


def test_readwriteonce_storage_serves_engines_to_every_node(cluster: Cluster, run_operator: Any) -> None:
    """Defect 5: with only ReadWriteOnce storage, one engine store holds the volume (the build Job shares its
    node) and each server copies its engine into a pod-local cache; a new engine builds while the old serves."""
    run_operator()
    spec = merge(TINY, {"runtime": {"replicas": 3}, "storage": {"cacheSizeLimit": "10Gi"}})
    _built_and_serving(cluster, "voice", spec)
    h1 = engine_hash(spec)
    pvc = cluster.core.read_namespaced_persistent_volume_claim("voice-engines", cluster.ns)
    assert pvc.spec.access_modes == ["ReadWriteOnce"]
    store = cluster.apps.read_namespaced_deployment("voice-engines", cluster.ns)
    assert store.spec.replicas == 1 and store.spec.strategy.type == "Recreate"
    assert store.spec.template.spec.volumes[0].persistent_volume_claim.claim_name == "voice-engines"
    assert cluster.core.read_namespaced_service("voice-engines", cluster.ns).spec.ports[0].port == 8080
    pod = cluster.deployment("voice").spec.template.spec
    assert not any(v.persistent_volume_claim for v in pod.volumes)  # servers never mount the RWO volume
    (init,) = pod.init_containers
    assert init.command[1:] == ["fetch-engine", "--url", f"http://voice-engines:8080/{h1}", "--out", f"/engines/{h1}"]

    cluster.patch_spec("voice", {"engine": {"maxBatchSize": 8}})
    h2 = engine_hash(merge(spec, {"engine": {"maxBatchSize": 8}}))
    st = cluster.wait_phase("voice", "Building")
    assert st["servingEngineHash"] == h1 and conditions(st)["Ready"] == ("True", "Serving")
    job = next(j for j in cluster.jobs("voice") if j["metadata"]["labels"][crd.HASH_LABEL] == h2)
    (term,) = job["spec"]["template"]["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "engine-store"


def test_ready_condition_works_with_kubectl_wait(kube: Any, cluster: Cluster, run_operator: Any) -> None:
    """Defect 6: `kubectl wait --for=condition=Ready` tells when the endpoint serves."""
    import subprocess

    run_operator()
    cluster.create("voice", TINY)
    cluster.wait_phase("voice", "Building")
    wait = [
        "kubectl",
        "--kubeconfig",
        str(kube.admin_kubeconfig),
        "-n",
        cluster.ns,
        "wait",
        "--for=condition=Ready",
        "otts/voice",
    ]
    early = subprocess.run([*wait, "--timeout=2s"], capture_output=True, text=True)
    assert early.returncode != 0  # building: not ready
    finish_job(cluster.api, cluster.ns, cluster.job_names("voice")[0], succeeded=True)
    wait_for(lambda: cluster.deployment("voice"), what="the Deployment")
    make_deployment_available(cluster.api, cluster.ns, "voice")
    done = subprocess.run([*wait, "--timeout=30s"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    get = subprocess.run(
        ["kubectl", "--kubeconfig", str(kube.admin_kubeconfig), "-n", cluster.ns, "get", "otts", "voice"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert get.stdout.split()[:5] == ["NAME", "PHASE", "READY", "BUILD", "PROGRESS"] and "Done" in get.stdout


def test_child_rejected_while_serving_keeps_serving(cluster: Cluster, run_operator: Any) -> None:
    """Defect 6: a child the API server rejects on update is Degraded, the serving pods stay, not Failed."""
    run_operator()
    _built_and_serving(cluster, "voice", TINY)
    cluster.patch_spec(
        "voice", {"runtime": {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": ""}}}]}}
    )
    st = wait_for(
        lambda: cluster.status("voice") if conditions(cluster.status("voice"))["Degraded"][0] == "True" else None,
        what="Degraded",
    )
    assert conditions(st)["Degraded"] == ("True", "ChildRejected") and st["phase"] == "Ready"
    assert conditions(st)["Ready"] == ("True", "Serving")
    assert cluster.deployment("voice") is not None


def test_pod_template_fields_reach_the_pods(cluster: Cluster, run_operator: Any) -> None:
    """Defect 8: runtimeClassName, priorityClassName, spread, pod metadata, service account, rollout, PDB."""
    run_operator()
    cluster.core.create_namespaced_service_account(cluster.ns, {"metadata": {"name": "tts"}})
    spec = merge(
        TINY,
        {
            "runtime": {
                "gpus": 1,
                "runtimeClassName": "nvidia",
                "priorityClassName": "system-cluster-critical",
                "serviceAccountName": "tts",
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
                ],
                "podAnnotations": {"example.test/a": "1"},
                "podLabels": {"team": "voice"},
                "rollout": {"maxSurge": 0, "maxUnavailable": 1},
                "pdb": {"maxUnavailable": "50%"},
            }
        },
    )
    cluster.create("voice", spec)
    cluster.wait_phase("voice", "Building")
    finish_job(cluster.api, cluster.ns, cluster.job_names("voice")[0], succeeded=True)
    dep = wait_for(lambda: cluster.deployment("voice"), what="the Deployment")
    pod = dep.spec.template.spec
    assert (pod.runtime_class_name, pod.priority_class_name, pod.service_account_name) == (
        "nvidia",
        "system-cluster-critical",
        "tts",
    )
    assert pod.topology_spread_constraints[0].label_selector.match_labels[crd.INSTANCE_LABEL] == "voice"
    assert dep.spec.template.metadata.annotations["example.test/a"] == "1"
    assert dep.spec.template.metadata.labels["team"] == "voice"
    assert (dep.spec.strategy.rolling_update.max_surge, dep.spec.strategy.rolling_update.max_unavailable) == (0, 1)
    # The pass applies the PDB after the Deployment: it may not be there yet when the Deployment is.
    read_pdb = client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget
    pdb = wait_for(lambda: _read_or_none(read_pdb, "voice", cluster.ns), what="the PDB")
    assert pdb.spec.max_unavailable == "50%"
    cluster.patch_spec("voice", {"runtime": {"pdb": {"enabled": False}}})
    wait_for(
        lambda: (
            _read_or_none(client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget, "voice", cluster.ns)
            is None
        ),
        what="the PDB removed",
    )
