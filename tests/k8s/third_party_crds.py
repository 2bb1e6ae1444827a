"""CRDs of other projects (Gateway API, KEDA) for tests against the test API server, from the Go module zips
pinned in tests/k8s/crds/go.mod: `go mod download` puts them in the shared module cache (no build)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from k8s.waiting import wait_for

HERE = Path(__file__).resolve().parent
GATEWAY_API = "sigs.k8s.io/gateway-api"
KEDA = "github.com/kedacore/keda/v2"
CRD_DIRS = {GATEWAY_API: "config/crd/standard", KEDA: "config/crd/bases"}


def module_dir(module: str) -> Path:
    """The pinned module's directory in the cache, downloaded if missing (go.sum checks its hash)."""
    cache = Path(os.environ.get("ORPHEUS_CACHE", Path.home() / ".cache/orpheus-tts"))
    env = {**os.environ, "GOMODCACHE": str(cache / "go/mod"), "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
    proc = subprocess.run(
        ["go", "mod", "download", "-json", module], cwd=HERE / "crds", env=env, capture_output=True, text=True
    )
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module} failed: {info.get('Error') or proc.stderr.strip()}")
    return Path(info["Dir"])


def crd_documents(module: str, *files: str) -> list[dict]:
    base = module_dir(module) / CRD_DIRS[module]
    return [doc for name in files for doc in yaml.safe_load_all((base / name).read_text()) if doc]


def install(api: client.ApiClient, docs: list[dict]) -> None:
    """Creates the CRDs (409: already there) and waits until each is Established."""
    ext = client.ApiextensionsV1Api(api)
    for doc in docs:
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as e:
            if e.status != 409:
                raise
    for doc in docs:
        name = doc["metadata"]["name"]
        wait_for(
            lambda name=name: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(name).status.conditions or []
            ),
            timeout=60,
            what=f"CRD {name} to be Established",
        )
