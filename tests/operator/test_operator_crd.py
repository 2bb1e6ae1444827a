"""The CRD: names, defaults from the issue, and that every default is valid against the schema itself."""

from __future__ import annotations

import jsonschema
import pytest
from crd_schema import defaulted_spec, load_crd, root_schema

from orpheus_operator import crd


def test_names_match_the_contract() -> None:
    doc = load_crd()
    assert doc["metadata"]["name"] == f"{crd.PLURAL}.{crd.GROUP}"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        crd.KIND,
        crd.PLURAL,
        "orpheustts",
        ["otts"],
    )
    assert doc["spec"]["scope"] == "Namespaced"
    version = doc["spec"]["versions"][0]
    assert version["name"] == crd.VERSION and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Engine"] == ".spec.engine.backend"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_defaults_are_the_issues() -> None:
    spec = defaulted_spec({})
    assert spec["engine"] == {
        "backend": "trtllm",
        "weightQuantization": "int4_awq",
        "kvCacheDtype": "int8",
        "maxBatchSize": 20,
        "maxInputLen": 48,
        "maxOutputLen": 1024,
        "kvFreeGpuFraction": 0.92,
    }
    assert spec["snac"] == {"maxBatch": 64, "batchTimeoutMs": 0}
    assert spec["model"] == {"repo": "canopylabs/orpheus-3b-0.1-ft", "revision": "main"}
    # A100 (compute capability 8.0) by default, through spec.gpu: runtime.affinity is the user's alone.
    assert spec["gpu"] == {"computeCapability": "8.0", "resourceName": "nvidia.com/gpu"}
    assert "affinity" not in spec["runtime"] and "replicas" not in spec["runtime"]
    assert spec["autoscaling"]["enabled"] is False and spec["storage"]["retainOnDelete"] is True
    # Works on a stock cluster whose only storage class is ReadWriteOnce.
    assert spec["storage"]["accessMode"] == "ReadWriteOnce"


def test_security_defaults_pass_the_restricted_standard_and_merge_with_overrides() -> None:
    runtime = defaulted_spec({"runtime": {"securityContext": {"readOnlyRootFilesystem": False}}})["runtime"]
    assert runtime["podSecurityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert runtime["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,  # the override; the other defaults stay
        "capabilities": {"drop": ["ALL"]},
    }


def test_nested_defaults_apply_inside_given_objects() -> None:
    spec = defaulted_spec({"model": {"repo": "x/y", "hfTokenSecretRef": {"name": "hf"}}, "ingress": {"host": "a"}})
    assert spec["model"] == {"repo": "x/y", "revision": "main", "hfTokenSecretRef": {"name": "hf", "key": "token"}}
    assert spec["ingress"]["tls"] == {"enabled": False}


def test_defaulted_spec_validates_against_the_schema() -> None:
    schema = root_schema()["properties"]["spec"]
    jsonschema.Draft4Validator(schema).validate(defaulted_spec({}))


@pytest.mark.parametrize(
    "bad",
    [
        {"engine": {"backend": "vllm"}},
        {"engine": {"maxBatchSize": -1}},
        {"engine": {"kvFreeGpuFraction": 0}},
        {"storage": {"accessMode": "ReadOnlyMany"}},
        {"storage": {"accessMode": "ReadWriteOncePod"}},  # several pods can never share it
        {"gpu": {"computeCapability": "sm_90"}},
        {"storage": {"size": "lots"}},
    ],
)
def test_schema_rejects_bad_values(bad: dict) -> None:
    schema = root_schema()["properties"]["spec"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(defaulted_spec(bad))
