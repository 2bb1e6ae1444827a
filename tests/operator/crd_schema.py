"""The CRD's OpenAPI schema as the unit tests' source of defaults: the same structural defaulting the API
server does (a default is applied where a field is missing, then defaulted itself), so that render tests see
exactly the spec the operator gets. The integration tests check this against the real API server."""

from __future__ import annotations

import copy
import pathlib
import uuid
from typing import Any

import yaml

CRD_PATH = pathlib.Path(__file__).resolve().parents[2] / "charts/orpheus-tts-operator/crds/orpheustts.yaml"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def root_schema() -> dict[str, Any]:
    return load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for name in list(value):
            sub = props.get(name) or (extra if isinstance(extra, dict) else None)
            if sub:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def defaulted_spec(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return apply_defaults(root_schema()["properties"]["spec"], copy.deepcopy(spec or {}))


def make_body(
    spec: dict[str, Any] | None = None, name: str = "voice", namespace: str = "tts", generation: int = 1
) -> dict[str, Any]:
    """An OrpheusTTS as the API server would return it."""
    return {
        "apiVersion": "tts.orpheus.dev/v1alpha1",
        "kind": "OrpheusTTS",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.UUID(int=7)), "generation": generation},
        "spec": defaulted_spec(spec),
    }
