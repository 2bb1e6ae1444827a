"""What forces a rebuild: an engine's identity is the build-relevant part of a spec (`build_spec`) and its hash
(`engine_hash`). A new hash means a new engine (a new build Job, a new directory on the engines volume).

Everything else in the spec is runtime-only and is patched into the Deployment without a rebuild.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from orpheus_operator.config import OperatorConfig

HASH_LENGTH = 10


def runtime_image(spec: dict[str, Any], cfg: OperatorConfig) -> str:
    return spec["runtime"].get("image") or cfg.runtime_image


def build_image(spec: dict[str, Any], cfg: OperatorConfig) -> str:
    return spec["build"].get("image") or cfg.build_image or runtime_image(spec, cfg)


def image_follows_engine(spec: dict[str, Any], cfg: OperatorConfig) -> bool:
    """True when the runtime image also builds the engine: an engine is tied to the TensorRT-LLM version
    of the image that built it, so the serving image then changes only together with the engine."""
    return not (spec["build"].get("image") or cfg.build_image)


def build_spec(spec: dict[str, Any], cfg: OperatorConfig) -> dict[str, Any]:
    """What the engine-build Job needs to know: exactly the fields whose change requires a rebuild."""
    engine = spec["engine"]
    build = {
        "repo": spec["model"]["repo"],
        "revision": spec["model"]["revision"],
        "backend": engine["backend"],
        "weightQuantization": engine["weightQuantization"],
        "kvCacheDtype": engine["kvCacheDtype"],
        "maxBatchSize": engine["maxBatchSize"],
        "maxInputLen": engine["maxInputLen"],
        "maxOutputLen": engine["maxOutputLen"],
        "calibrationDir": spec["build"].get("calibrationDir"),
        "image": build_image(spec, cfg),
    }
    if engine["backend"] == "trtllm":
        # A TensorRT engine runs only on the GPU type it was built on: the GPU is part of its identity.
        gpu = spec["gpu"]
        build["gpu"] = {"computeCapability": gpu.get("computeCapability") or "", "products": gpu.get("products") or []}
    return build


def dumps(build: dict[str, Any]) -> str:
    """Canonical JSON: the hash input, and the annotation a Deployment keeps of the engine it serves."""
    return json.dumps(build, sort_keys=True, separators=(",", ":"))


def engine_hash(build: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(build).encode()).hexdigest()[:HASH_LENGTH]
