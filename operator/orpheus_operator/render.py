"""Spec -> Kubernetes manifests. Pure functions: no I/O, no clock, no defaults of their own.

`body` is an OrpheusTTS as the API server returns it, i.e. with the CRD's OpenAPI defaults applied;
fields without a default are optional and read with .get().
"""

from __future__ import annotations

import copy
from typing import Any

from orpheus_operator import crd, engine_identity
from orpheus_operator.config import OperatorConfig

Body = dict[str, Any]

# Gives ingress controllers and kube-proxy time to drop the pod before the runtime sees SIGTERM.
PRESTOP_SLEEP_SECONDS = 5
# Beyond preStop + drain: the runtime's own shutdown after the last stream.
SHUTDOWN_MARGIN_SECONDS = 15
# GPU feature discovery node labels. The compute capability labels are the same on MIG slices of a GPU.
GPU_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Writable paths under a read-only root filesystem (the pod contract, docs/deploy.md): scratch and the caches
# images point at.
SCRATCH_MOUNTS = {"tmp": "/tmp", "cache": "/home/orpheus/.cache"}
STORE_PORT = 8080
# The engine store only streams files: a small, fixed footprint.
STORE_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


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


def _resources(resources: dict[str, Any], gpus: int, gpu_resource: str) -> dict[str, Any]:
    out = copy.deepcopy(resources)
    limits = out.setdefault("limits", {})
    limits.pop(gpu_resource, None)
    out.get("requests", {}).pop(gpu_resource, None)
    if gpus > 0:
        limits[gpu_resource] = gpus  # extended resources: requests default to limits
    return {k: v for k, v in out.items() if v}


def gpu_node_requirements(gpu: dict[str, Any]) -> list[dict[str, Any]]:
    """Node selector requirements for the GPU an engine is built for (spec.gpu)."""
    exprs: list[dict[str, Any]] = []
    if gpu.get("computeCapability"):
        major, minor = gpu["computeCapability"].split(".")
        exprs.append({"key": GPU_MAJOR_LABEL, "operator": "In", "values": [major]})
        exprs.append({"key": GPU_MINOR_LABEL, "operator": "In", "values": [minor]})
    if gpu.get("products"):
        exprs.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(gpu["products"])})
    return exprs


def merged_affinity(affinity: dict[str, Any] | None, required: list[dict[str, Any]]) -> dict[str, Any]:
    """The user's affinity with `required` added to every required node selector term (terms are ORed, the
    expressions of a term ANDed): the user narrows placement, never widens it past the GPU requirement."""
    out = copy.deepcopy(affinity or {})
    if not required:
        return out
    node = out.setdefault("nodeAffinity", {})
    req = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = req.get("nodeSelectorTerms") or [{}]
    req["nodeSelectorTerms"] = [
        {**t, "matchExpressions": [*(t.get("matchExpressions") or []), *required]} for t in terms
    ]
    return out


def _pod_placement(spec: dict[str, Any], gpu: dict[str, Any] | None) -> dict[str, Any]:
    """Node placement and identity shared by the operand pods. A TensorRT-LLM engine only runs on the GPU that
    built it, so every pod on a GPU gets that GPU's node requirement (`gpu`), merged into the user's affinity."""
    runtime = spec["runtime"]
    pod: dict[str, Any] = {}
    for key in ("nodeSelector", "tolerations", "imagePullSecrets", "priorityClassName", "serviceAccountName"):
        if runtime.get(key):
            pod[key] = copy.deepcopy(runtime[key])
    affinity = merged_affinity(runtime.get("affinity"), gpu_node_requirements(gpu) if gpu else [])
    if affinity:
        pod["affinity"] = affinity
    # The operand pods never call the Kubernetes API.
    pod["automountServiceAccountToken"] = False
    pod["securityContext"] = copy.deepcopy(runtime["podSecurityContext"])
    return pod


def _pod_metadata(spec: dict[str, Any], labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    runtime = spec["runtime"]
    meta: dict[str, Any] = {"labels": {**(runtime.get("podLabels") or {}), **labels}}  # ours win
    merged = {**(annotations or {}), **(runtime.get("podAnnotations") or {})}
    if merged:
        meta["annotations"] = merged
    return meta


def _scratch_volumes() -> list[dict[str, Any]]:
    return [{"name": name, "emptyDir": {}} for name in SCRATCH_MOUNTS]


def _scratch_mounts() -> list[dict[str, Any]]:
    return [{"name": name, "mountPath": path} for name, path in SCRATCH_MOUNTS.items()]


def _pvc_volume(body: Body) -> dict[str, Any]:
    """The engines claim, never read-only at the volume: readers get read-only *mounts* (`_engine_mounts`).
    The kubelet applies fsGroup to a local volume only at its first mount on a node, and not at all when that
    mount is read-only; when the engine store's read-only mount came first, the build Job that mounted the same
    volume a moment later could not write to it (EACCES, seen on the real node in tests/e2e)."""
    return {"name": "engines", "persistentVolumeClaim": {"claimName": crd.pvc_name(body["metadata"]["name"])}}


def _shm_volume(shm_size: str) -> dict[str, Any]:
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}


def _engine_mounts(read_only: bool) -> list[dict[str, Any]]:
    return [
        {"name": "engines", "mountPath": crd.ENGINES_MOUNT, "readOnly": read_only},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *_scratch_mounts(),
    ]


def _secret_env(name: str, ref: dict[str, str]) -> dict[str, Any]:
    # The operator never reads Secrets: the kubelet resolves the reference into the container's env.
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"]}}}


def engine_dir(engine_hash: str) -> str:
    return f"{crd.ENGINES_MOUNT}/{engine_hash}"


def copies_engines(spec: dict[str, Any]) -> bool:
    """ReadWriteOnce storage: one node mounts the volume (engine store + build Job); servers copy engines."""
    return spec["storage"]["accessMode"] != "ReadWriteMany"


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


def store_selector(body: Body) -> dict[str, str]:
    return {crd.INSTANCE_LABEL: body["metadata"]["name"], crd.COMPONENT_LABEL: crd.ENGINE_STORE}


def render_store(body: Body, cfg: OperatorConfig) -> dict[str, Any] | None:
    """ReadWriteOnce only: the engine store, the one pod that mounts the volume besides the build Job. It sits on
    a node of the engine's GPU type (without taking a GPU) so that the build Job, which must share its node, can
    run there; servers on any node copy their engine from it (`orpheus-tts fetch-engine`)."""
    spec = body["spec"]
    if not copies_engines(spec):
        return None
    name = crd.store_name(body["metadata"]["name"])
    labels = {**crd.labels(body["metadata"]["name"], crd.ENGINE_STORE)}
    container = {
        "name": "store",
        "image": engine_identity.runtime_image(spec, cfg),
        "imagePullPolicy": spec["runtime"]["imagePullPolicy"],
        "command": ["orpheus-tts", "serve-engines", "--dir", crd.ENGINES_MOUNT, "--port", str(STORE_PORT)],
        "ports": [{"name": "http", "containerPort": STORE_PORT, "protocol": "TCP"}],
        "resources": copy.deepcopy(STORE_RESOURCES),
        "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}, "periodSeconds": 10},
        "securityContext": copy.deepcopy(spec["runtime"]["securityContext"]),
        "volumeMounts": [{"name": "engines", "mountPath": crd.ENGINES_MOUNT, "readOnly": True}, *_scratch_mounts()],
    }
    pod = {
        **_pod_placement(spec, spec["gpu"] if spec["build"]["gpus"] > 0 else None),
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [_pvc_volume(body), *_scratch_volumes()],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(body, name, crd.ENGINE_STORE),
        "spec": {
            "replicas": 1,
            # A ReadWriteOnce volume cannot be attached to the old and the new pod's nodes at once.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": store_selector(body)},
            "template": {"metadata": _pod_metadata(spec, labels), "spec": pod},
        },
    }


def render_store_service(body: Body) -> dict[str, Any] | None:
    if not copies_engines(body["spec"]):
        return None
    name = crd.store_name(body["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(body, name, crd.ENGINE_STORE),
        "spec": {
            "selector": store_selector(body),
            "ports": [{"name": "http", "port": STORE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def store_url(body: Body, engine_hash: str) -> str:
    return f"http://{crd.store_name(body['metadata']['name'])}:{STORE_PORT}/{engine_hash}"


# ---- engine build --------------------------------------------------------------------------------------


def build_args(build: dict[str, Any], engine_hash: str) -> list[str]:
    """`orpheus-tts build-engine` flags (build_engine.parser; tests/test_contracts.py parses them with it)."""
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
    meta = _metadata(
        body, name, crd.ENGINE_BUILD, annotations={crd.BUILD_SPEC_ANNOTATION: engine_identity.dumps(build)}
    )
    meta["labels"] = labels
    env: list[dict[str, Any]] = [
        # The download cache lives on the PVC so that a retried build resumes instead of starting over.
        {"name": "HF_HOME", "value": f"{crd.ENGINES_MOUNT}/.cache/huggingface"},
    ]
    if spec["model"].get("hfTokenSecretRef"):
        env.append(_secret_env("HF_TOKEN", spec["model"]["hfTokenSecretRef"]))
    gpus = spec["build"]["gpus"]
    container = {
        "name": "build",
        "image": build["image"],
        "imagePullPolicy": spec["runtime"]["imagePullPolicy"],
        "command": ["orpheus-tts"],
        "args": build_args(build, engine_hash),
        "env": env,
        "resources": _resources(spec["build"]["resources"], gpus, spec["gpu"]["resourceName"]),
        "securityContext": copy.deepcopy(spec["runtime"]["securityContext"]),
        "volumeMounts": _engine_mounts(read_only=False),
        # build_engine writes its one-line reason to /dev/termination-log; the logs' tail otherwise.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        **_pod_placement(spec, spec["gpu"] if gpus > 0 else None),
        "containers": [container],
        "volumes": [_pvc_volume(body), _shm_volume(spec["runtime"]["shmSize"]), *_scratch_volumes()],
    }
    if gpus > 0 and spec["runtime"].get("runtimeClassName"):
        pod_spec["runtimeClassName"] = spec["runtime"]["runtimeClassName"]
    if copies_engines(spec):
        # A ReadWriteOnce volume is attached to one node: the engine store's.
        term = {"labelSelector": {"matchLabels": store_selector(body)}, "topologyKey": HOSTNAME_LABEL}
        affinity = pod_spec.setdefault("affinity", {}).setdefault("podAffinity", {})
        affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(term)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": spec["build"]["backoffLimit"],
            "activeDeadlineSeconds": spec["build"]["deadlineSeconds"],
            "template": {"metadata": _pod_metadata(spec, labels), "spec": pod_spec},
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
    env += readiness(runtime)[1]
    # The user's env wins by name (a duplicate name would be rejected by server-side apply).
    extra = {item["name"]: item for item in runtime.get("env") or []}
    return [item for item in env if item["name"] not in extra] + [copy.deepcopy(v) for v in extra.values()]


def readiness(runtime: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The server's readiness probe and the env that goes with it (docs/deploy.md, load-aware routing).

    Without runtime.loadAwareReadiness (the default), /readyz changes only at load and drain: two misses in a row.
    With it, a full pod answers 503 "full" until 10% of its places are free (the server's hysteresis keeps that
    from flapping, runtime/orpheus_tts/serve/readiness.py), so the probe runs every 2 s and acts on the first
    answer: a full pod leaves the endpoints within about 2 s plus their propagation, not 10 s. Nothing is added
    when it is off, so that existing Deployments are not rolled by an operator upgrade."""
    probe: dict[str, Any] = {"httpGet": {"port": "http", "path": "/readyz"}, "timeoutSeconds": 3}
    if not runtime.get("loadAwareReadiness"):
        return {**probe, "periodSeconds": 5, "failureThreshold": 2}, []
    probe = {**probe, "periodSeconds": 2, "failureThreshold": 1, "successThreshold": 1}
    return probe, [{"name": "ORPHEUS_LOAD_AWARE_READINESS", "value": "1"}]


def desired_replicas(spec: dict[str, Any], deployment: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """(spec.replicas to send or None, the REPLICAS_AT_AUTOSCALING annotation or None).

    Switching autoscaling on or off never changes the pod count by itself: while autoscaling is on, the HPA owns
    the count and the Deployment records runtime.replicas as it was when autoscaling started; once it is off,
    the HPA's last count stays until runtime.replicas differs from that record (the user set a new count)."""
    want = spec["runtime"].get("replicas")
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    recorded = annotations.get(crd.REPLICAS_AT_AUTOSCALING_ANNOTATION)
    if spec["autoscaling"]["enabled"]:
        return None, recorded if recorded is not None else ("" if want is None else str(want))
    if want is None:
        return None, None
    if recorded is not None and recorded == str(want):
        return None, recorded
    return want, None


def render_deployment(
    body: Body,
    cfg: OperatorConfig,
    build: dict[str, Any],
    engine_hash: str,
    existing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The serving Deployment for the engine `engine_hash` built from `build`; `existing` is the Deployment as
    it is now (its replica bookkeeping, see desired_replicas)."""
    spec = body["spec"]
    runtime = spec["runtime"]
    image = (
        build["image"] if engine_identity.image_follows_engine(spec, cfg) else engine_identity.runtime_image(spec, cfg)
    )
    http = {"port": "http"}
    gpus = runtime["gpus"]
    container = {
        "name": "tts",
        "image": image,
        "imagePullPolicy": runtime["imagePullPolicy"],
        "command": ["orpheus-tts", "serve"],
        "ports": [{"name": "http", "containerPort": crd.HTTP_PORT, "protocol": "TCP"}],
        "env": runtime_env(spec, build, engine_hash),
        "resources": _resources(runtime["resources"], gpus, spec["gpu"]["resourceName"]),
        "securityContext": copy.deepcopy(runtime["securityContext"]),
        "volumeMounts": _engine_mounts(read_only=True),
        # Loading an engine takes minutes on first start; liveness only begins after /healthz answered.
        "startupProbe": {"httpGet": {**http, "path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 90},
        "readinessProbe": readiness(runtime)[0],
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
    # The GPU of the engine being served (it may differ from spec.gpu while a new engine builds).
    gpu = {**spec["gpu"], **(build.get("gpu") or {})} if gpus > 0 else None
    pod: dict[str, Any] = {
        **_pod_placement(spec, gpu),
        # Service links would inject <SERVICE>_PORT-style variables next to the runtime's own settings.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "containers": [container],
    }
    if gpus > 0 and runtime.get("runtimeClassName"):
        pod["runtimeClassName"] = runtime["runtimeClassName"]
    if runtime.get("topologySpreadConstraints"):
        pod["topologySpreadConstraints"] = [
            {"labelSelector": {"matchLabels": selector}, **c}
            for c in copy.deepcopy(runtime["topologySpreadConstraints"])
        ]
    if copies_engines(spec):
        # ReadWriteOnce storage: the engine is copied from the engine store into a pod-local cache, verified
        # file by file against its manifest, before the server starts.
        cache: dict[str, Any] = {}
        if spec["storage"].get("cacheSizeLimit"):
            cache["sizeLimit"] = spec["storage"]["cacheSizeLimit"]
        pod["volumes"] = [{"name": "engines", "emptyDir": cache}, _shm_volume(runtime["shmSize"]), *_scratch_volumes()]
        pod["initContainers"] = [
            {
                "name": "fetch-engine",
                "image": image,
                "imagePullPolicy": runtime["imagePullPolicy"],
                "command": [
                    "orpheus-tts",
                    "fetch-engine",
                    "--url",
                    store_url(body, engine_hash),
                    "--out",
                    engine_dir(engine_hash),
                ],
                "resources": copy.deepcopy(STORE_RESOURCES),
                "securityContext": copy.deepcopy(runtime["securityContext"]),
                "volumeMounts": [{"name": "engines", "mountPath": crd.ENGINES_MOUNT}, *_scratch_mounts()],
            }
        ]
    else:
        pod["volumes"] = [_pvc_volume(body), _shm_volume(runtime["shmSize"]), *_scratch_volumes()]
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(crd.HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }
    labels = {**crd.labels(body["metadata"]["name"], crd.SERVER), crd.HASH_LABEL: engine_hash}
    rollout = runtime["rollout"]
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # Default: old pods serve until new ones are ready (needs one spare GPU during a rollout).
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": rollout["maxSurge"], "maxUnavailable": rollout["maxUnavailable"]},
        },
        "revisionHistoryLimit": 3,
        # Beyond the startup probe's 15 minutes of engine loading, before a rollout counts as stalled.
        "progressDeadlineSeconds": 1200,
        "template": {"metadata": _pod_metadata(spec, labels, annotations), "spec": pod},
    }
    replicas, recorded = desired_replicas(spec, existing)
    if replicas is not None:
        dep_spec["replicas"] = replicas  # else the HPA, or whoever set it last, owns the count
    annotations = {crd.BUILD_SPEC_ANNOTATION: engine_identity.dumps(build)}
    if recorded is not None:
        annotations[crd.REPLICAS_AT_AUTOSCALING_ANNOTATION] = recorded
    meta = _metadata(body, body["metadata"]["name"], crd.SERVER)
    meta["annotations"] = annotations
    meta["labels"][crd.HASH_LABEL] = engine_hash
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": dep_spec}


def replicas_handover(deployment: dict[str, Any]) -> dict[str, Any]:
    """An apply of only spec.replicas at its current value, by another field manager. Server-side apply removes a
    field its manager stops sending (the Deployment would fall back to 1 replica): sent once before the operator
    stops sending replicas, this keeps the running count for the HPA (or the next owner) to take over."""
    meta = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": deployment["spec"].get("replicas", 1)},
    }


def manages_replicas(deployment: dict[str, Any], manager: str = crd.FIELD_MANAGER) -> bool:
    for entry in deployment["metadata"].get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
                return True
    return False


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


def render_pdb(body: Body) -> dict[str, Any] | None:
    pdb = body["spec"]["runtime"]["pdb"]
    if not pdb["enabled"]:
        return None
    # maxUnavailable (not minAvailable): a single replica must not block node drains forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(body, body["metadata"]["name"], crd.SERVER),
        "spec": {"maxUnavailable": pdb["maxUnavailable"], "selector": {"matchLabels": selector_labels(body)}},
    }


def endpoint(body: Body) -> str:
    spec = body["spec"]
    ingress = spec["ingress"]
    if ingress["enabled"]:
        scheme = "https" if ingress["tls"]["enabled"] else "http"
        return f"{scheme}://{ingress['host']}{ingress['path']}"
    meta = body["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc:{spec['service']['port']}"
