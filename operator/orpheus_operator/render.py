"""Spec -> Kubernetes manifests. Pure functions: no I/O, no clock, no defaults of their own.

`body` is an OrpheusTTS as the API server returns it, i.e. with the CRD's OpenAPI defaults applied;
fields without a default are optional and read with .get().
"""

from __future__ import annotations

import copy
from typing import Any

from orpheus_operator import crd, hashing
from orpheus_operator.config import OperatorConfig

Body = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
# Gives ingress controllers and kube-proxy time to drop the pod before the runtime sees SIGTERM.
PRESTOP_SLEEP_SECONDS = 5
# Beyond preStop + drain: the runtime's own shutdown after the last stream.
SHUTDOWN_MARGIN_SECONDS = 15


def owner_reference(body: Body) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(body: Body, name: str, component: str, owned: bool = True, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": crd.labels(body["metadata"]["name"], component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(body)]
    for key, value in extra.items():
        if value:
            meta[key] = value
    return meta


def _resources(resources: dict[str, Any], gpus: int) -> dict[str, Any]:
    out = copy.deepcopy(resources)
    limits = out.setdefault("limits", {})
    limits.pop(GPU_RESOURCE, None)
    out.get("requests", {}).pop(GPU_RESOURCE, None)
    if gpus > 0:
        limits[GPU_RESOURCE] = gpus  # extended resources: requests default to limits
    return {k: v for k, v in out.items() if v}


def _scheduling(spec: dict[str, Any]) -> dict[str, Any]:
    """Node placement shared by the build Job and the Deployment: a TensorRT-LLM engine only runs on the
    GPU architecture that built it."""
    runtime = spec["runtime"]
    pod: dict[str, Any] = {}
    for key in ("nodeSelector", "affinity", "tolerations", "imagePullSecrets"):
        if runtime.get(key):
            pod[key] = copy.deepcopy(runtime[key])
    return pod


def _engine_volumes(body: Body, read_only: bool, shm_size: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "engines",
            "persistentVolumeClaim": {"claimName": crd.pvc_name(body["metadata"]["name"]), "readOnly": read_only},
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
    ]


def _engine_mounts(read_only: bool) -> list[dict[str, Any]]:
    return [
        {"name": "engines", "mountPath": crd.ENGINES_MOUNT, "readOnly": read_only},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]


def _secret_env(name: str, ref: dict[str, str]) -> dict[str, Any]:
    # The operator never reads Secrets: the kubelet resolves the reference into the container's env.
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"]}}}


def engine_dir(engine_hash: str) -> str:
    return f"{crd.ENGINES_MOUNT}/{engine_hash}"


# ---- storage -------------------------------------------------------------------------------------------


def render_pvc(body: Body) -> dict[str, Any]:
    storage = body["spec"]["storage"]
    # retainOnDelete: no ownerReference, so the garbage collector leaves the PVC (and its engines) alone.
    meta = _metadata(
        body, crd.pvc_name(body["metadata"]["name"]), crd.ENGINE_STORAGE, owned=not storage["retainOnDelete"]
    )
    spec: dict[str, Any] = {
        "accessModes": [storage["accessMode"]],
        "resources": {"requests": {"storage": storage["size"]}},
    }
    if storage.get("storageClassName"):
        spec["storageClassName"] = storage["storageClassName"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


# ---- engine build --------------------------------------------------------------------------------------


def build_args(build: dict[str, Any], engine_hash: str) -> list[str]:
    """`orpheus-tts build-engine` flags, per contracts.md."""
    out = engine_dir(engine_hash)
    args = [
        "build-engine",
        "--backend",
        build["backend"],
        "--model",
        build["repo"],
        "--revision",
        build["revision"],
        "--out",
        out,
        "--weight-quantization",
        build["weightQuantization"],
        "--kv-cache-dtype",
        build["kvCacheDtype"],
        "--max-batch-size",
        str(build["maxBatchSize"]),
        "--max-input-len",
        str(build["maxInputLen"]),
        "--max-output-len",
        str(build["maxOutputLen"]),
        "--status-file",
        f"{out}.status.json",
        # A retry can start while the previous pod still holds the lock: wait instead of failing with 8.
        "--wait",
    ]
    if build.get("calibrationDir"):
        args += ["--calib-dir", build["calibrationDir"]]
    return args


def render_job(body: Body, build: dict[str, Any], engine_hash: str, attempt: int) -> dict[str, Any]:
    spec = body["spec"]
    name = crd.job_name(body["metadata"]["name"], engine_hash, attempt)
    labels = {
        **crd.labels(body["metadata"]["name"], crd.ENGINE_BUILD),
        crd.HASH_LABEL: engine_hash,
        crd.ATTEMPT_LABEL: str(attempt),
    }
    meta = _metadata(body, name, crd.ENGINE_BUILD, annotations={crd.BUILD_SPEC_ANNOTATION: hashing.dumps(build)})
    meta["labels"] = labels
    env: list[dict[str, Any]] = [
        # The download cache lives on the PVC so that a retried build resumes instead of starting over.
        {"name": "HF_HOME", "value": f"{crd.ENGINES_MOUNT}/.cache/huggingface"},
    ]
    if spec["model"].get("hfTokenSecretRef"):
        env.append(_secret_env("HF_TOKEN", spec["model"]["hfTokenSecretRef"]))
    container = {
        "name": "build",
        "image": build["image"],
        "imagePullPolicy": spec["runtime"]["imagePullPolicy"],
        "command": ["orpheus-tts"],
        "args": build_args(build, engine_hash),
        "env": env,
        "resources": _resources(spec["build"]["resources"], spec["build"]["gpus"]),
        "volumeMounts": _engine_mounts(read_only=False),
        # build_engine writes its one-line reason to /dev/termination-log; the logs' tail otherwise.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        **_scheduling(spec),
        "containers": [container],
        "volumes": _engine_volumes(body, read_only=False, shm_size=spec["runtime"]["shmSize"]),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": spec["build"]["backoffLimit"],
            "activeDeadlineSeconds": spec["build"]["deadlineSeconds"],
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# ---- serving -------------------------------------------------------------------------------------------


def selector_labels(body: Body) -> dict[str, str]:
    labels = crd.labels(body["metadata"]["name"], crd.SERVER)
    labels.pop(crd.MANAGED_BY_LABEL)
    return labels


def runtime_env(spec: dict[str, Any], build: dict[str, Any], engine_hash: str) -> list[dict[str, Any]]:
    """The runtime's env (runtime/orpheus_tts/config.py). Engine limits come from the engine being served,
    not from the spec: while a new engine builds, the pods keep the limits their engine was built with."""
    runtime = spec["runtime"]
    env: list[dict[str, Any]] = [
        {"name": "ORPHEUS_BACKEND", "value": build["backend"]},
        {"name": "TRTLLM_ENGINE_DIR", "value": engine_dir(engine_hash)},
        {"name": "TRTLLM_MAX_INPUT_LEN", "value": str(build["maxInputLen"])},
        {"name": "TRTLLM_MAX_OUTPUT_LEN", "value": str(build["maxOutputLen"])},
        {"name": "TRTLLM_MAX_BATCH_SIZE", "value": str(build["maxBatchSize"])},
        {"name": "KV_FREE_GPU_FRAC", "value": str(spec["engine"]["kvFreeGpuFraction"])},
        {"name": "SNAC_MAX_BATCH", "value": str(spec["snac"]["maxBatch"])},
        {"name": "SNAC_BATCH_TIMEOUT_MS", "value": str(spec["snac"]["batchTimeoutMs"])},
        {"name": "PORT", "value": str(crd.HTTP_PORT)},
        {"name": "ORPHEUS_DRAIN_GRACE_S", "value": str(runtime["drainGraceSeconds"])},
        {"name": "ORPHEUS_PLAYGROUND", "value": "1" if runtime["playground"] else "0"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TLLM_WORKER_USE_SINGLE_PROCESS", "value": "1"},
    ]
    if runtime.get("apiKeySecretRef"):
        env.append(_secret_env("ORPHEUS_API_KEY", runtime["apiKeySecretRef"]))
    # The user's env wins by name (a duplicate name would be rejected by server-side apply).
    extra = {item["name"]: item for item in runtime.get("env") or []}
    return [item for item in env if item["name"] not in extra] + [copy.deepcopy(v) for v in extra.values()]


def render_deployment(body: Body, cfg: OperatorConfig, build: dict[str, Any], engine_hash: str) -> dict[str, Any]:
    """The serving Deployment for the engine `engine_hash` built from `build`."""
    spec = body["spec"]
    runtime = spec["runtime"]
    image = build["image"] if hashing.image_follows_engine(spec, cfg) else hashing.runtime_image(spec, cfg)
    http = {"port": "http"}
    container = {
        "name": "tts",
        "image": image,
        "imagePullPolicy": runtime["imagePullPolicy"],
        "command": ["orpheus-tts", "serve"],
        "ports": [{"name": "http", "containerPort": crd.HTTP_PORT, "protocol": "TCP"}],
        "env": runtime_env(spec, build, engine_hash),
        "resources": _resources(runtime["resources"], runtime["gpus"]),
        "volumeMounts": _engine_mounts(read_only=True),
        # Loading an engine takes minutes on first start; liveness only begins after /healthz answered.
        "startupProbe": {"httpGet": {**http, "path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 90},
        "readinessProbe": {
            "httpGet": {**http, "path": "/readyz"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {**http, "path": "/healthz"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
    }
    grace = PRESTOP_SLEEP_SECONDS + runtime["drainGraceSeconds"] + SHUTDOWN_MARGIN_SECONDS
    selector = selector_labels(body)
    template = {
        "metadata": {
            "labels": {**crd.labels(body["metadata"]["name"], crd.SERVER), crd.HASH_LABEL: engine_hash},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(crd.HTTP_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            **_scheduling(spec),
            # Service links would inject <SERVICE>_PORT-style variables next to the runtime's own settings.
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
            "volumes": _engine_volumes(body, read_only=True, shm_size=runtime["shmSize"]),
        },
    }
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # Old pods serve until new ones are ready: needs one spare GPU during a rollout.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 3,
        # Beyond the startup probe's 15 minutes of engine loading, before a rollout counts as stalled.
        "progressDeadlineSeconds": 1200,
        "template": template,
    }
    if not spec["autoscaling"]["enabled"]:
        dep_spec["replicas"] = runtime["replicas"]  # else the HPA owns the count
    meta = _metadata(
        body, body["metadata"]["name"], crd.SERVER, annotations={crd.BUILD_SPEC_ANNOTATION: hashing.dumps(build)}
    )
    meta["labels"][crd.HASH_LABEL] = engine_hash
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": dep_spec}


def render_service(body: Body) -> dict[str, Any]:
    service = body["spec"]["service"]
    meta = _metadata(body, body["metadata"]["name"], crd.SERVER, annotations=service.get("annotations"))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": service["type"],
            "selector": selector_labels(body),
            "ports": [{"name": "http", "port": service["port"], "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_ingress(body: Body) -> dict[str, Any] | None:
    ingress = body["spec"]["ingress"]
    if not ingress["enabled"]:
        return None
    name = body["metadata"]["name"]
    timeout = str(ingress["websocketTimeoutSeconds"])
    annotations = {
        # Streams stay open for minutes: the default 60 s proxy timeouts would cut WebSockets mid-utterance.
        "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
        **(ingress.get("annotations") or {}),
    }
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": ingress["host"],
                "http": {
                    "paths": [
                        {
                            "path": ingress["path"],
                            "pathType": "Prefix",
                            "backend": {"service": {"name": name, "port": {"name": "http"}}},
                        }
                    ]
                },
            }
        ],
    }
    if ingress.get("className"):
        spec["ingressClassName"] = ingress["className"]
    if ingress["tls"]["enabled"]:
        spec["tls"] = [{"hosts": [ingress["host"]], "secretName": ingress["tls"].get("secretName") or f"{name}-tls"}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(body, name, crd.SERVER, annotations=annotations),
        "spec": spec,
    }


def render_hpa(body: Body) -> dict[str, Any] | None:
    """Scales on active streams per pod. Needs a custom metrics adapter (e.g. prometheus-adapter) serving
    orpheus_active_streams from the pods' /metrics; without one the HPA reports that it cannot
    get the metric, and the replica count stays where it is."""
    scaling = body["spec"]["autoscaling"]
    if not scaling["enabled"]:
        return None
    name = body["metadata"]["name"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(body, name, crd.SERVER),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling["minReplicas"],
            "maxReplicas": scaling["maxReplicas"],
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": crd.ACTIVE_STREAMS_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(scaling["targetActiveStreamsPerPod"])},
                    },
                }
            ],
        },
    }


def render_pdb(body: Body) -> dict[str, Any]:
    # maxUnavailable (not minAvailable): a single replica must not block node drains forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(body, body["metadata"]["name"], crd.SERVER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(body)}},
    }


def endpoint(body: Body) -> str:
    spec = body["spec"]
    ingress = spec["ingress"]
    if ingress["enabled"]:
        scheme = "https" if ingress["tls"]["enabled"] else "http"
        return f"{scheme}://{ingress['host']}{ingress['path']}"
    meta = body["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc:{spec['service']['port']}"
