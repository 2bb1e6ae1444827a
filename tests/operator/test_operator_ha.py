"""Two operator replicas with kopf peering (issue #12), against the real API server and under the chart's RBAC
(replicas=2): one reconciles while the other stands by, and when the active one stops, the standby takes over."""

from __future__ import annotations

import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from crd_schema import CRD_PATH
from k8s import third_party_crds as third_party
from k8s.waiting import wait_for
from kubernetes import client, utils
from operator_harness import CHART, TINY, OperatorProcess, install_crd

from orpheus_operator import crd, exposure

pytestmark = pytest.mark.k8s
PEERING = "op-ha"
PEERING_NAME = f"{PEERING}-orpheus-tts-operator"  # the chart's fullname for the release op-ha
KOPF_PEERING_CRDS = CRD_PATH.parent / "kopf-peerings.yaml"


def chart_docs(kube: Any, namespace: str, *templates: str) -> list[dict]:
    args = [
        "template",
        PEERING,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        f"replicas=2,watchNamespaces={{{namespace}}}",
    ]
    for t in templates:
        args += ["--show-only", t]
    return [d for d in yaml.safe_load_all(kube.helm(*args).stdout) if d]


@pytest.fixture
def operators(kube: Any, namespace: str, tmp_path: pathlib.Path) -> Iterator[tuple[client.ApiClient, list]]:
    with kube.api_client() as api:
        install_crd(api)
        third_party.install(api, [d for d in yaml.safe_load_all(KOPF_PEERING_CRDS.read_text()) if d])
        docs = chart_docs(
            kube, namespace, "templates/serviceaccount.yaml", "templates/rbac.yaml", "templates/peering.yaml"
        )
        (peering,) = [d for d in docs if d["kind"] == "KopfPeering"]
        for doc in docs:
            if doc is not peering:
                utils.create_from_dict(api, doc, namespace=doc["metadata"].get("namespace", namespace))
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", peering
        )
        sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        kubeconfig = kube.service_account_kubeconfig(namespace, sa)
        env = {"ORPHEUS_OPERATOR_PEERING": peering["metadata"]["name"]}
        procs = [OperatorProcess(kubeconfig, tmp_path / f"operator-{i}.log", [namespace], env) for i in range(2)]
        try:
            for p in procs:
                p.start()
            yield api, procs
        finally:
            objects = client.CustomObjectsApi(api)
            for item in objects.list_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL)["items"]:
                objects.patch_namespaced_custom_object(
                    crd.GROUP,
                    crd.VERSION,
                    namespace,
                    crd.PLURAL,
                    item["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )
            for p in procs:
                p.stop()


def active(proc: OperatorProcess) -> bool:
    """kopf starts every replica paused; it resumes when it sees no live peer of higher priority and pauses again
    when one appears (the first replica is alone for a moment). The last transition tells the state."""
    log = proc.log_path.read_text(errors="replace")
    return log.rfind("Resuming operations after the pause") > log.rfind("Pausing operations in favour of")


def test_one_replica_reconciles_and_the_other_takes_over(operators, namespace) -> None:
    api, procs = operators
    peering = client.CustomObjectsApi(api)

    def peers() -> int:
        got = peering.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", PEERING_NAME)
        return len(got.get("status") or {})

    # Both replicas announced themselves (each with a random priority); peering events are handled at once,
    # so shortly after, only the higher one is active, and it stays so.
    wait_for(lambda: peers() == 2, timeout=60, what="both replicas in the peering object")
    wait_for(lambda: sum(active(p) for p in procs) == 1, timeout=60, what="one replica to be active")
    time.sleep(3)
    assert sum(active(p) for p in procs) == 1, "the peering decision flapped"
    (leader,) = [p for p in procs if active(p)]
    (standby,) = [p for p in procs if not active(p)]
    standby_log_before = len(standby.log_path.read_text(errors="replace"))

    objects = client.CustomObjectsApi(api)
    batch = client.BatchV1Api(api)

    def create(name: str) -> None:
        # runtime.replicas set: the scale subresource answers GET only when its specReplicasPath exists.
        spec = {**TINY, "runtime": {**TINY.get("runtime", {}), "replicas": 1}}
        body = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec}
        objects.create_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, body)

    def build_jobs(name: str) -> list:
        return batch.list_namespaced_job(namespace, label_selector=f"{crd.INSTANCE_LABEL}={name}").items

    create("first")
    wait_for(lambda: build_jobs("first"), timeout=60, what="the active replica to start a build")
    # status.selector feeds the scale subresource (kubectl scale, an HPA aimed at the OrpheusTTS).
    wait_for(
        lambda: (
            objects.get_namespaced_custom_object_scale(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "first")[
                "status"
            ].get("selector")
            == exposure.selector({"metadata": {"name": "first"}})
        ),
        timeout=30,
        what="status.selector",
    )
    # The standby ran no handler since: it neither reconciled "first" nor raced the leader.
    assert "Handler 'resource_event'" not in standby.log_path.read_text(errors="replace")[standby_log_before:]

    assert not active(standby)
    leader.stop(signal.SIGTERM)  # a rolling upgrade or a node drain: kopf withdraws from the peering on exit
    wait_for(lambda: active(standby), timeout=90, what="the standby to resume")
    create("second")
    wait_for(lambda: build_jobs("second"), timeout=60, what="the former standby to reconcile")
