"""Render functions: spec (as defaulted by the CRD) -> manifests."""

from __future__ import annotations

from crd_schema import make_body

from orpheus_operator import crd, engine_identity, render
from orpheus_operator.config import OperatorConfig

CFG = OperatorConfig(runtime_image="runtime:1")


def build_of(body: dict, cfg: OperatorConfig = CFG) -> tuple[dict, str]:
    build = engine_identity.build_spec(body["spec"], cfg)
    return build, engine_identity.engine_hash(build)


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_job_runs_build_engine_with_the_contract_flags() -> None:
    body = make_body({"model": {"hfTokenSecretRef": {"name": "hf"}}, "build": {"calibrationDir": "/engines/calib"}})
    build, h = build_of(body)
    job = render.render_job(body, build, h, attempt=2)
    assert job["metadata"]["name"] == f"voice-build-{h}-2"
    assert job["metadata"]["labels"][crd.HASH_LABEL] == h
    assert job["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["orpheus-tts"]
    assert c["args"] == [
        "build-engine",
        "--backend",
        "trtllm",
        "--model",
        "canopylabs/orpheus-3b-0.1-ft",
        "--revision",
        "main",
        "--out",
        f"/engines/{h}",
        "--weight-quantization",
        "int4_awq",
        "--kv-cache-dtype",
        "int8",
        "--max-batch-size",
        "20",
        "--max-input-len",
        "48",
        "--max-output-len",
        "1024",
        "--status-file",
        f"/engines/{h}.status.json",
        "--wait",
        "--calib-dir",
        "/engines/calib",
    ]
    assert env_of(c)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"] == "runtime:1"
    assert pod["restartPolicy"] == "Never"
    assert {"name": "engines", "mountPath": "/engines", "readOnly": False} in c["volumeMounts"]
    # The GPU the engine is built for (A100 by default), and the engine store's node (ReadWriteOnce).
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {e["key"]: e["values"] for e in term["matchExpressions"]} == {
        "nvidia.com/gpu.compute.major": ["8"],
        "nvidia.com/gpu.compute.minor": ["0"],
    }
    (store,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert store["topologyKey"] == "kubernetes.io/hostname"
    assert store["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "engine-store"
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 7200


def test_public_model_job_has_no_token() -> None:
    body = make_body(
        {
            "engine": {"backend": "torch", "weightQuantization": "none", "kvCacheDtype": "auto"},
            "model": {"repo": "tiny-random"},
            "build": {"gpus": 0},
        }
    )
    build, h = build_of(body)
    (c,) = render.render_job(body, build, h, 1)["spec"]["template"]["spec"]["containers"]
    assert "HF_TOKEN" not in env_of(c)
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_job_name_fits_a_label_value() -> None:
    body = make_body(name="a" * 40)
    build, h = build_of(body)
    assert len(render.render_job(body, build, h, 999)["metadata"]["name"]) <= 63


def test_deployment_serves_the_engine_per_the_runtime_contract() -> None:
    body = make_body(
        {
            "runtime": {"apiKeySecretRef": {"name": "keys"}, "drainGraceSeconds": 40, "gpus": 2, "replicas": 1},
            "snac": {"maxBatch": 32},
            "storage": {"accessMode": "ReadWriteMany"},
        }
    )
    build, h = build_of(body)
    dep = render.render_deployment(body, CFG, build, h)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env == {
        "ORPHEUS_BACKEND": "trtllm",
        "TRTLLM_ENGINE_DIR": f"/engines/{h}",
        "TRTLLM_MAX_INPUT_LEN": "48",
        "TRTLLM_MAX_OUTPUT_LEN": "1024",
        "TRTLLM_MAX_BATCH_SIZE": "20",
        "KV_FREE_GPU_FRAC": "0.92",
        "SNAC_MAX_BATCH": "32",
        "SNAC_BATCH_TIMEOUT_MS": "0",
        "PORT": "8000",
        "ORPHEUS_DRAIN_GRACE_S": "40",
        "ORPHEUS_PLAYGROUND": "1",
        "HF_HUB_OFFLINE": "1",
        "TLLM_WORKER_USE_SINGLE_PROCESS": "1",
        "ORPHEUS_API_KEY": {"secretKeyRef": {"name": "keys", "key": "api-key"}},
    }
    assert c["command"] == ["orpheus-tts", "serve"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "engines", "mountPath": "/engines", "readOnly": True} in c["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Read-only at the mount, not at the volume (see render._pvc_volume: fsGroup on local volumes).
    assert volumes["engines"]["persistentVolumeClaim"] == {"claimName": "voice-engines"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    # preStop, then the runtime's drain, must fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] > render.PRESTOP_SLEEP_SECONDS + 40
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(render.PRESTOP_SLEEP_SECONDS)]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dep["metadata"]["labels"][crd.HASH_LABEL] == h
    assert engine_identity.dumps(build) == dep["metadata"]["annotations"][crd.BUILD_SPEC_ANNOTATION]


def test_deployment_keeps_the_served_engines_limits_while_a_new_one_builds() -> None:
    old = make_body()
    old_build, old_hash = build_of(old)
    new = make_body({"engine": {"maxBatchSize": 32}, "runtime": {"replicas": 3, "image": "runtime:2"}})
    dep = render.render_deployment(new, CFG, old_build, old_hash)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["TRTLLM_MAX_BATCH_SIZE"] == "20" and env_of(c)["TRTLLM_ENGINE_DIR"] == f"/engines/{old_hash}"
    assert c["image"] == "runtime:1"  # the image that built the served engine
    assert dep["spec"]["replicas"] == 3  # runtime-only fields apply at once


def test_runtime_image_applies_at_once_with_a_separate_build_image() -> None:
    cfg = OperatorConfig(runtime_image="runtime:1", build_image="builder:1")
    body = make_body({"runtime": {"image": "runtime:2"}})
    build, h = build_of(body, cfg)
    (c,) = render.render_deployment(body, cfg, build, h)["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "runtime:2" and build["image"] == "builder:1"


def test_playground_can_be_switched_off() -> None:
    body = make_body({"runtime": {"playground": False}})
    build, h = build_of(body)
    (c,) = render.render_deployment(body, CFG, build, h)["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["ORPHEUS_PLAYGROUND"] == "0"


def test_load_aware_readiness_is_off_by_default_and_a_field_turns_it_on() -> None:
    """docs/deploy.md (load-aware routing) says why it is off by default; off adds nothing to the pod."""
    body = make_body()
    build, h = build_of(body)
    (c,) = render.render_deployment(body, CFG, build, h)["spec"]["template"]["spec"]["containers"]
    assert "ORPHEUS_LOAD_AWARE_READINESS" not in env_of(c)
    assert c["readinessProbe"] == {
        "httpGet": {"port": "http", "path": "/readyz"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 2,
    }

    body = make_body({"runtime": {"loadAwareReadiness": True}})
    build, h2 = build_of(body)
    assert h2 == h  # a runtime-only change: the pods roll, nothing is rebuilt
    (c,) = render.render_deployment(body, CFG, build, h)["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["ORPHEUS_LOAD_AWARE_READINESS"] == "1"
    probe = c["readinessProbe"]
    assert probe["httpGet"]["path"] == "/readyz"
    # A full pod leaves the endpoints at the first "full" answer, at most 2 s after it filled.
    assert (probe["periodSeconds"], probe["failureThreshold"], probe["successThreshold"]) == (2, 1, 1)


def test_user_env_overrides_by_name() -> None:
    body = make_body({"runtime": {"env": [{"name": "PORT", "value": "9"}, {"name": "EXTRA", "value": "x"}]}})
    build, h = build_of(body)
    (c,) = render.render_deployment(body, CFG, build, h)["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)) and env_of(c)["PORT"] == "9" and env_of(c)["EXTRA"] == "x"


def test_autoscaling_leaves_replicas_to_the_hpa() -> None:
    """The HPA itself (scaling.render_hpa) is tested in test_exposure.py."""
    body = make_body(
        {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetActiveStreamsPerPod": 12}}
    )
    build, h = build_of(body)
    assert "replicas" not in render.render_deployment(body, CFG, build, h)["spec"]


def test_pvc_ownership_follows_retention() -> None:
    kept = render.render_pvc(make_body())
    assert "ownerReferences" not in kept["metadata"]
    assert kept["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}}
    gone = render.render_pvc(make_body({"storage": {"retainOnDelete": False, "storageClassName": "fast"}}))
    assert gone["metadata"]["ownerReferences"][0]["kind"] == "OrpheusTTS"
    assert gone["spec"]["storageClassName"] == "fast"


def test_service_pdb_and_endpoint() -> None:
    """The Ingress itself (exposure.render_ingress) is tested in test_exposure.py."""
    body = make_body(
        {
            "ingress": {
                "enabled": True,
                "host": "tts.example.com",
                "className": "nginx",
                "tls": {"enabled": True},
                "annotations": {"a": "b"},
            }
        }
    )
    svc = render.render_service(body)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == render.selector_labels(body)
    assert render.endpoint(body) == "https://tts.example.com/"
    assert render.endpoint(make_body()) == "http://voice.tts.svc:8000"
    pdb = render.render_pdb(body)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": render.selector_labels(body)}}


def test_render_is_pure() -> None:
    body = make_body({"runtime": {"env": [{"name": "X", "value": "1"}]}})
    snapshot = repr(body)
    build, h = build_of(body)
    first = render.render_deployment(body, CFG, build, h)
    first["spec"]["template"]["spec"]["containers"][0]["env"].clear()
    first["spec"]["template"]["spec"]["affinity"].clear()
    assert repr(body) == snapshot
    assert render.render_deployment(body, CFG, build, h) != first


def test_no_service_links_and_a_rollout_deadline_beyond_the_startup_probe() -> None:
    body = make_body()
    build, h = build_of(body)
    dep = render.render_deployment(body, CFG, build, h)
    assert dep["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert render.render_job(body, build, h, 1)["spec"]["template"]["spec"]["enableServiceLinks"] is False
    startup = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert dep["spec"]["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]


# ---- issue 11: security context, GPU identity, storage, pod template, autoscaling hand-over ------------------


def _pods(body: dict) -> dict[str, dict]:
    build, h = build_of(body)
    return {
        "job": render.render_job(body, build, h, 1)["spec"]["template"]["spec"],
        "deployment": render.render_deployment(body, CFG, build, h)["spec"]["template"]["spec"],
        "store": render.render_store(body, CFG)["spec"]["template"]["spec"],
    }


def test_operand_pods_meet_the_restricted_standard_by_default() -> None:
    for what, pod in _pods(make_body()).items():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001, what
        assert pod["securityContext"]["fsGroup"] == 10001, what  # the non-root build can write the volume
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert pod["automountServiceAccountToken"] is False, what
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, what
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/tmp", "/home/orpheus/.cache", "/engines"} <= mounts, what


def test_gpu_requirement_is_merged_into_the_users_affinity_not_replaced() -> None:
    anti = {
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {}}]}
    }
    zones = {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}
    spec = {
        "gpu": {"computeCapability": "9.0", "products": ["NVIDIA-H100-80GB-HBM3"]},
        "runtime": {
            "affinity": {
                **anti,
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [zones, {}]}},
            }
        },
    }
    for what, pod in _pods(make_body(spec)).items():
        assert pod["affinity"]["podAntiAffinity"] == anti["podAntiAffinity"], what
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert len(terms) == 2, what
        for term in terms:  # every ORed term keeps the GPU requirement
            keys = {e["key"]: e["values"] for e in term["matchExpressions"]}
            assert keys["nvidia.com/gpu.compute.major"] == ["9"] and keys["nvidia.com/gpu.compute.minor"] == ["0"]
            assert keys["nvidia.com/gpu.product"] == ["NVIDIA-H100-80GB-HBM3"]
        assert terms[0]["matchExpressions"][0]["key"] == "topology.kubernetes.io/zone"


def test_only_anti_affinity_keeps_the_default_gpu() -> None:
    anti = {
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {}}]}
    }
    pod = _pods(make_body({"runtime": {"affinity": anti}}))["deployment"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["8"]} in term["matchExpressions"]


def test_cpu_pods_get_no_gpu_requirement() -> None:
    body = make_body(
        {
            "engine": {"backend": "torch", "weightQuantization": "none", "kvCacheDtype": "auto"},
            "runtime": {"gpus": 0},
            "build": {"gpus": 0},
        }
    )
    pods = _pods(body)
    assert "nodeAffinity" not in pods["deployment"].get("affinity", {})
    assert "nodeAffinity" not in pods["store"].get("affinity", {})


def test_servers_keep_the_served_engines_gpu_while_a_new_one_builds() -> None:
    old = make_body()
    old_build, old_hash = build_of(old)
    new = make_body({"gpu": {"computeCapability": "9.0"}})
    pod = render.render_deployment(new, CFG, old_build, old_hash)["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["8"]} in term["matchExpressions"]


def test_readwriteonce_servers_copy_their_engine_from_the_store() -> None:
    body = make_body({"storage": {"cacheSizeLimit": "20Gi"}})
    build, h = build_of(body)
    pod = render.render_deployment(body, CFG, build, h)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["engines"] == {"name": "engines", "emptyDir": {"sizeLimit": "20Gi"}}  # no PVC on server nodes
    (init,) = pod["initContainers"]
    assert init["command"] == [
        "orpheus-tts",
        "fetch-engine",
        "--url",
        f"http://voice-engines:8080/{h}",
        "--out",
        f"/engines/{h}",
    ]
    store = render.render_store(body, CFG)
    assert store["spec"]["strategy"] == {"type": "Recreate"} and store["spec"]["replicas"] == 1
    (c,) = store["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["orpheus-tts", "serve-engines"]
    assert {"name": "engines", "mountPath": "/engines", "readOnly": True} in c["volumeMounts"]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})  # sits on a GPU node without taking a GPU
    assert render.render_store_service(body)["spec"]["ports"][0]["port"] == 8080


def test_readwritemany_mounts_the_volume_everywhere_and_has_no_store() -> None:
    body = make_body({"storage": {"accessMode": "ReadWriteMany"}})
    assert render.render_store(body, CFG) is None and render.render_store_service(body) is None
    job = _job_pod(body)
    assert "podAffinity" not in job.get("affinity", {})


def _job_pod(body: dict) -> dict:
    build, h = build_of(body)
    return render.render_job(body, build, h, 1)["spec"]["template"]["spec"]


def test_pod_template_fields() -> None:
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
    body = make_body(
        {
            "runtime": {
                "runtimeClassName": "nvidia",
                "priorityClassName": "inference",
                "serviceAccountName": "tts",
                "topologySpreadConstraints": [spread],
                "podAnnotations": {"a": "1"},
                "podLabels": {"team": "voice", "app.kubernetes.io/component": "mine"},
                "rollout": {"maxSurge": 0, "maxUnavailable": 1},
                "pdb": {"maxUnavailable": "25%"},
                "podSecurityContext": {"runAsUser": 2000},
            }
        }
    )
    build, h = build_of(body)
    dep = render.render_deployment(body, CFG, build, h)
    pod = dep["spec"]["template"]["spec"]
    meta = dep["spec"]["template"]["metadata"]
    assert (pod["runtimeClassName"], pod["priorityClassName"], pod["serviceAccountName"]) == (
        "nvidia",
        "inference",
        "tts",
    )
    (tsc,) = pod["topologySpreadConstraints"]
    assert tsc["labelSelector"]["matchLabels"] == render.selector_labels(body) and tsc["maxSkew"] == 1
    assert meta["annotations"]["a"] == "1" and meta["annotations"]["prometheus.io/scrape"] == "true"
    assert meta["labels"]["team"] == "voice" and meta["labels"]["app.kubernetes.io/component"] == "server"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert pod["securityContext"]["runAsUser"] == 2000 and pod["securityContext"]["fsGroup"] == 10001
    assert render.render_pdb(body)["spec"]["maxUnavailable"] == "25%"
    job = _job_pod(body)
    assert (job["runtimeClassName"], job["priorityClassName"]) == ("nvidia", "inference")
    assert render.render_pdb(make_body({"runtime": {"pdb": {"enabled": False}}})) is None


def test_replicas_unset_are_left_alone() -> None:
    body = make_body()
    build, h = build_of(body)
    assert "replicas" not in render.render_deployment(body, CFG, build, h)["spec"]


def test_autoscaling_on_and_off_keeps_the_count_until_the_user_sets_one() -> None:
    def dep(recorded: str | None) -> dict:
        annotations = {} if recorded is None else {crd.REPLICAS_AT_AUTOSCALING_ANNOTATION: recorded}
        return {"metadata": {"annotations": annotations}}

    fixed = {"runtime": {"replicas": 8}}
    scaled = {"runtime": {"replicas": 8}, "autoscaling": {"enabled": True}}
    assert render.desired_replicas(make_body(fixed)["spec"], dep(None)) == (8, None)
    # On: the HPA owns the count; runtime.replicas is recorded once.
    assert render.desired_replicas(make_body(scaled)["spec"], dep(None)) == (None, "8")
    assert render.desired_replicas(make_body(scaled)["spec"], dep("8")) == (None, "8")
    # Off again: the HPA's count stays while runtime.replicas is what it was...
    assert render.desired_replicas(make_body(fixed)["spec"], dep("8")) == (None, "8")
    # ...and a new runtime.replicas applies.
    assert render.desired_replicas(make_body({"runtime": {"replicas": 3}})["spec"], dep("8")) == (3, None)
    assert render.desired_replicas(make_body({"runtime": {"replicas": 3}})["spec"], dep("")) == (3, None)
    assert render.desired_replicas(make_body()["spec"], dep("")) == (None, None)


def test_handover_keeps_the_running_count() -> None:
    dep = {
        "metadata": {
            "name": "voice",
            "namespace": "tts",
            "managedFields": [
                {"manager": "orpheus-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            ],
        },
        "spec": {"replicas": 8},
    }
    assert render.manages_replicas(dep)
    assert render.replicas_handover(dep)["spec"] == {"replicas": 8}
    dep["metadata"]["managedFields"][0]["fieldsV1"] = {"f:spec": {"f:template": {}}}
    assert not render.manages_replicas(dep)


def test_the_engines_claim_is_never_read_only_at_the_volume() -> None:
    """Every pod that mounts the engines volume mounts it writable at the volume level, so whichever mounts it first
    on a node gets the kubelet's fsGroup ownership change; readers are read-only at their container mount."""
    body = make_body({"runtime": {"replicas": 1}, "storage": {"accessMode": "ReadWriteOnce"}})
    build, h = build_of(body)
    pods = [
        render.render_job(body, build, h, 1)["spec"]["template"]["spec"],
        render.render_store(body, CFG)["spec"]["template"]["spec"],
    ]
    for pod in pods:
        (claim,) = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert "readOnly" not in claim
    store_mounts = pods[1]["containers"][0]["volumeMounts"]
    assert {"name": "engines", "mountPath": "/engines", "readOnly": True} in store_mounts
