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
    assert version["name"] == crd.VERSION and version["subresources"]["status"] == {}
    # issue #12: `kubectl scale otts/NAME` (tests/operator/test_exposure_k8s.py runs it)
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.runtime.replicas"
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
    products = spec["runtime"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]["values"]
    assert all("A100" in p for p in products)
    assert spec["autoscaling"]["enabled"] is False and spec["storage"]["retainOnDelete"] is True


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
        {"storage": {"size": "lots"}},
    ],
)
def test_schema_rejects_bad_values(bad: dict) -> None:
    schema = root_schema()["properties"]["spec"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(defaulted_spec(bad))
