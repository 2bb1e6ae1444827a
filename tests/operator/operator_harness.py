"""Helpers for the operator's integration tests: RBAC from the chart, the operator as a real subprocess, and the
Job / Pod / Deployment status changes that a kubelet and the Job and Deployment controllers would make (the test
control plane runs none of them)."""

from __future__ import annotations

import copy
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import yaml
from crd_schema import CRD_PATH, defaulted_spec
from k8s.control_plane import free_port, stop_process
from k8s.waiting import wait_for
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from orpheus_operator import crd, engine_identity
from orpheus_operator.config import OperatorConfig

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts/orpheus-tts-operator"
GROUP, VERSION, PLURAL = "tts.orpheus.dev", "v1alpha1", "orpheusttses"
RUNTIME_IMAGE = "example.test/orpheus-tts:1"
# CPU profile: the torch backend with the tiny random model, no GPU.
TINY = {
    "model": {"repo": "tiny-random"},
    "engine": {"backend": "torch", "weightQuantization": "none", "kvCacheDtype": "auto"},
    "runtime": {"gpus": 0, "affinity": {}, "tolerations": []},
    "build": {"gpus": 0},
}


CFG = OperatorConfig(runtime_image=RUNTIME_IMAGE)


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def engine_hash(spec: dict) -> str:
    return engine_identity.engine_hash(engine_identity.build_spec(defaulted_spec(spec), CFG))


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


def install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    doc = yaml.safe_load(CRD_PATH.read_text())
    try:
        ext.create_custom_resource_definition(doc)
    except ApiException as e:
        if e.status != 409:
            raise
        current = ext.read_custom_resource_definition(doc["metadata"]["name"])
        doc["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(doc["metadata"]["name"], doc)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(doc["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, what="the CRD to be established")


def install_rbac(
    kube: Any, api: client.ApiClient, release: str, namespace: str, watch_namespaces: list[str]
) -> list[dict[str, Any]]:
    """Renders the chart's ServiceAccount and RBAC with helm and creates them; returns what it created."""
    args = [
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ]
    if watch_namespaces:
        args += ["--set", "watchNamespaces={" + ",".join(watch_namespaces) + "}"]
    docs = [d for d in yaml.safe_load_all(kube.helm(*args).stdout) if d]
    for doc in docs:
        utils.create_from_dict(api, doc, namespace=doc["metadata"].get("namespace", namespace))
    return docs


class OperatorProcess:
    """`orpheus-operator` in a subprocess, logged in with a ServiceAccount kubeconfig."""

    def __init__(
        self,
        kubeconfig: pathlib.Path,
        log_path: pathlib.Path,
        namespaces: list[str],
        extra_env: dict[str, str] | None = None,  # issue #12: e.g. ORPHEUS_OPERATOR_PEERING
    ) -> None:
        self.kubeconfig, self.log_path, self.namespaces = kubeconfig, log_path, namespaces
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0  # issue #12

    def start(self) -> OperatorProcess:
        self.port = free_port()
        self.metrics_port = free_port()  # issue #12
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORPHEUS_OPERATOR_", "KUBECONFIG"))}
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "ORPHEUS_OPERATOR_RUNTIME_IMAGE": RUNTIME_IMAGE,
                "ORPHEUS_OPERATOR_RESYNC_SECONDS": "1",
                "ORPHEUS_OPERATOR_BUILD_RETRY_BASE_SECONDS": "2",
                "ORPHEUS_OPERATOR_BUILD_RETRY_MAX_SECONDS": "4",
                "ORPHEUS_OPERATOR_METRICS_PORT": str(self.metrics_port),  # issue #12
                **self.extra_env,
            }
        )
        args = [a for ns in self.namespaces for a in ("--namespace", ns)] or ["--all-namespaces"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from orpheus_operator.main import main; sys.exit(main())",
                *args,
                "--health-port",
                str(self.port),
                "--log-level",
                "DEBUG",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self.healthy, timeout=60, what=f"the operator's /healthz (log: {self.log_path})")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited early:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20, sig=sig)
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# ---- what the controllers and the kubelet would do ---------------------------------------------------------


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def finish_job(api: client.ApiClient, namespace: str, name: str, succeeded: bool, reason: str = "") -> None:
    """Marks a Job Complete or Failed the way the Job controller does (the API server validates the sequence)."""
    batch = client.BatchV1Api(api)
    t = now()
    if succeeded:
        conditions = [
            {
                "type": "SuccessCriteriaMet",
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": t,
                "lastTransitionTime": t,
            },
            {
                "type": "Complete",
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": t,
                "lastTransitionTime": t,
            },
        ]
        status = {
            "startTime": t,
            "completionTime": t,
            "succeeded": 1,
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": conditions,
        }
    else:
        reason = reason or "BackoffLimitExceeded"
        message = "Job has reached the specified backoff limit"
        conditions = [
            {
                "type": "FailureTarget",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": t,
                "lastTransitionTime": t,
            },
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": t,
                "lastTransitionTime": t,
            },
        ]
        status = {
            "startTime": t,
            "failed": 1,
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": conditions,
        }
    batch.patch_namespaced_job_status(name, namespace, {"status": status})


def failed_build_pod(api: client.ApiClient, namespace: str, job: dict[str, Any], exit_code: int, message: str) -> None:
    """The Job's pod, terminated with build_engine's exit code and termination message."""
    build_pod(
        api,
        namespace,
        job,
        {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Error",
                "message": message,
                "startedAt": now(),
                "finishedAt": now(),
            }
        },
        phase="Failed",
    )


def build_pod(api: client.ApiClient, namespace: str, job: dict[str, Any], state: dict[str, Any], phase: str) -> None:
    """The Job's pod with its `build` container in `state`, as the kubelet reports it."""
    core = client.CoreV1Api(api)
    name = job["metadata"]["name"]
    try:  # the ServiceAccount admission plugin wants it, and no controller here creates it
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    except ApiException as e:
        if e.status != 409:
            raise
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-x1",
            "namespace": namespace,
            "labels": {"job-name": name, "batch.kubernetes.io/job-name": name},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": name,
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": RUNTIME_IMAGE}]},
    }
    core.create_namespaced_pod(namespace, pod)
    status = {
        "phase": phase,
        "containerStatuses": [
            {"name": "build", "image": RUNTIME_IMAGE, "imageID": "", "ready": False, "restartCount": 0, "state": state}
        ],
    }
    core.patch_namespaced_pod_status(pod["metadata"]["name"], namespace, {"status": status})


def make_deployment_available(api: client.ApiClient, namespace: str, name: str) -> None:
    """What the Deployment controller reports once the rollout is done and every pod is ready."""
    apps = client.AppsV1Api(api)
    dep = apps.read_namespaced_deployment(name, namespace)
    n = dep.spec.replicas if dep.spec.replicas is not None else 1
    t = now()
    status = {
        "observedGeneration": dep.metadata.generation,
        "replicas": n,
        "updatedReplicas": n,
        "readyReplicas": n,
        "availableReplicas": n,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
                "lastUpdateTime": t,
                "lastTransitionTime": t,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": "rollout complete",
                "lastUpdateTime": t,
                "lastTransitionTime": t,
            },
        ],
    }
    apps.patch_namespaced_deployment_status(name, namespace, {"status": status})
