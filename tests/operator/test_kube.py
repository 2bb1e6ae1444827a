"""kube.py against the real API server: a kind the server does not serve (an optional child whose CRD is not
installed, e.g. HTTPRoute without the Gateway API) reads as absent, so switching such a child off never fails a
reconcile; asking for one is a 404 the reconciler reports; a CRD installed while the operator runs is found
once the remembered miss expires (not before: each miss re-reads all of discovery)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from k8s import third_party_crds as third_party
from kubernetes import client

from orpheus_operator.kube import ApiError, Kube

pytestmark = pytest.mark.k8s


def widget_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def test_a_kind_the_server_does_not_serve_reads_as_absent(kube: Any, namespace: str) -> None:
    group = f"{namespace}.example.test"  # unique: the API server lives for the whole session
    api_version = f"{group}/v1"
    widget = {"apiVersion": api_version, "kind": "Widget", "metadata": {"name": "w", "namespace": namespace}}
    with kube.api_client() as admin:
        api = Kube(kube.api_client(), absent_recheck_seconds=0)
        remembering = Kube(kube.api_client())  # the operator's default: a miss is remembered for a minute
        try:
            assert asyncio.run(remembering.get(api_version, "Widget", namespace, "w")) is None
            assert asyncio.run(api.get(api_version, "Widget", namespace, "w")) is None
            assert asyncio.run(api.delete(api_version, "Widget", namespace, "w")) is False
            with pytest.raises(ApiError) as refused:
                asyncio.run(api.apply(widget))
            assert refused.value.status == 404 and "Widget" in refused.value.message
            # The CRD arrives while this client (and its cached discovery) lives: it is found.
            third_party.install(admin, [widget_crd(group)])
            try:
                assert asyncio.run(api.apply(widget))["metadata"]["name"] == "w"
                assert asyncio.run(remembering.get(api_version, "Widget", namespace, "w")) is None  # until it expires
                assert asyncio.run(api.get(api_version, "Widget", namespace, "w")) is not None
                assert asyncio.run(api.delete(api_version, "Widget", namespace, "w")) is True
            finally:
                client.ApiextensionsV1Api(admin).delete_custom_resource_definition(f"widgets.{group}")
        finally:
            api.close()
            remembering.close()
