"""Paths and small helpers shared by the chart tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "orpheus-tts-operator"
CPU_VALUES = CHART / "ci" / "cpu-values.yaml"
GPU_VALUES = CHART / "ci" / "gpu-values.yaml"
# The Kubernetes version the test control plane runs (tests/k8s/kubernetes/go.mod).
KUBE_VERSION = "1.37.2"


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def container_env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def server_dry_run_create(api, obj: dict) -> dict:
    """Creates obj with dryRun=All and fieldValidation=Strict: the API server validates it fully (schema, unknown
    fields, CRD rules, admission) and stores nothing."""
    from kubernetes.dynamic import DynamicClient

    resource = DynamicClient(api).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = obj["metadata"].get("namespace") if resource.namespaced else None
    method, url, headers, body, post = api.param_serialize(
        "POST",
        resource.path(namespace=namespace),
        query_params=[("dryRun", "All"), ("fieldValidation", "Strict")],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=obj,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, headers, body, post)
    response.read()
    return api.response_deserialize(response, {"2XX": "object"}).data


def deep_merge(base: dict, over: dict) -> dict:
    """helm's merge of a values file over the chart's values."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
