"""Which spec changes rebuild the engine (new hash) and which only patch the Deployment."""

from __future__ import annotations

import pytest
from crd_schema import defaulted_spec

from orpheus_operator import engine_identity
from orpheus_operator.config import OperatorConfig

CFG = OperatorConfig(runtime_image="runtime:1")


def engine_hash(spec: dict, cfg: OperatorConfig = CFG) -> str:
    return engine_identity.engine_hash(engine_identity.build_spec(defaulted_spec(spec), cfg))


BASE = engine_hash({})


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"repo": "unsloth/orpheus-3b-0.1-ft"}},
        {"model": {"revision": "abc123"}},
        {"engine": {"weightQuantization": "int8"}},
        {"engine": {"kvCacheDtype": "auto"}},
        {"engine": {"maxBatchSize": 32}},
        {"engine": {"maxInputLen": 64}},
        {"engine": {"maxOutputLen": 2048}},
        {"engine": {"backend": "torch", "weightQuantization": "none", "kvCacheDtype": "auto"}},
        {"build": {"calibrationDir": "/engines/calib"}},
        {"build": {"image": "builder:2"}},
        {"runtime": {"image": "runtime:2"}},  # the runtime image builds the engine unless a build image is set
    ],
)
def test_build_relevant_changes_rebuild(change: dict) -> None:
    assert engine_hash(change) != BASE


@pytest.mark.parametrize(
    "change",
    [
        {"runtime": {"replicas": 3}},
        {"runtime": {"resources": {"requests": {"cpu": "8"}}}},
        {"runtime": {"env": [{"name": "X", "value": "1"}]}},
        {"engine": {"kvFreeGpuFraction": 0.8}},
        {"snac": {"maxBatch": 32, "batchTimeoutMs": 2}},
        {"autoscaling": {"enabled": True}},
        {"service": {"port": 80}},
        {"ingress": {"enabled": True, "host": "tts.example.com"}},
        {"storage": {"size": "100Gi"}},
        {"build": {"backoffLimit": 5, "deadlineSeconds": 600}},
        {"model": {"hfTokenSecretRef": {"name": "other"}}},
    ],
)
def test_runtime_only_changes_keep_the_engine(change: dict) -> None:
    assert engine_hash(change) == BASE


def test_runtime_image_is_runtime_only_with_a_separate_build_image() -> None:
    cfg = OperatorConfig(runtime_image="runtime:1", build_image="builder:1")
    assert engine_hash({"runtime": {"image": "runtime:2"}}, cfg) == engine_hash({}, cfg)
    assert engine_identity.image_follows_engine(defaulted_spec({}), CFG)
    assert not engine_identity.image_follows_engine(defaulted_spec({}), cfg)


def test_hash_is_stable_and_short() -> None:
    assert engine_hash({}) == BASE and len(BASE) == engine_identity.HASH_LENGTH and int(BASE, 16) >= 0
