"""The chart against a real kube-apiserver: server-side validation of everything it renders, and a real
helm install / upgrade / uninstall (no kubelet: the operator pod never runs, the objects are checked)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from k8s.waiting import gone, wait_for
from kubernetes import client
from kubernetes.client.rest import ApiException

from chart.support import (
    CHART,
    CPU_VALUES,
    GPU_VALUES,
    KUBE_VERSION,
    ROOT,
    container_env,
    server_dry_run_create,
)

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "tts.orpheus.dev", "v1alpha1", "orpheusttses"


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["-f", str(CPU_VALUES)],
        ["-f", str(GPU_VALUES), "--set", "watchNamespaces={NS},build.image.repository=r/b,extraEnv[0].name=X"],
    ],
    ids=["defaults", "cpu", "gpu-namespaced"],
)
def test_rendered_objects_pass_server_side_validation(kube, crd, namespace, helm, values):
    values = [v.replace("NS", namespace) for v in values]
    out = helm("template", "v", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *values).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    assert {"ServiceAccount", "Service", "Deployment", "Pod"} <= {o["kind"] for o in objects}
    with kube.api_client() as api:
        for obj in objects:
            try:
                created = server_dry_run_create(api, obj)
            except ApiException as e:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} rejected by the API server: {e.body}")
            assert created["metadata"]["name"] == obj["metadata"]["name"]


def test_dry_run_rejects_unknown_fields(kube, namespace, render):
    """The validation above is strict: a misspelt field in a template would fail it."""
    dep = next(o for o in render(namespace=namespace) if o["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with kube.api_client() as api, pytest.raises(ApiException) as err:
        server_dry_run_create(api, dep)
    assert err.value.status == 400
    assert "livenessProbes" in err.value.body


def test_server_rejects_an_invalid_instance(kube, crd, namespace, helm):
    """The CRD, not only values.schema.json, guards instances: a torch engine cannot use int4_awq."""
    out = helm(
        "template",
        "v",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "instances[0].name=bad,instances[0].spec.engine.backend=torch",
    ).stdout
    (instance,) = [o for o in yaml.safe_load_all(out) if o and o["kind"] == "OrpheusTTS"]
    with kube.api_client() as api, pytest.raises(ApiException) as err:
        server_dry_run_create(api, instance)
    assert err.value.status == 422
    assert "int4_awq" in err.value.body


def test_install_upgrade_uninstall(kube, namespace):
    release = namespace  # unique: the ClusterRole is named after the release
    fullname = f"{release}-orpheus-tts-operator"
    out = kube.helm("install", release, str(CHART), "--namespace", namespace, "-f", str(CPU_VALUES)).stdout
    assert f"kubectl -n {namespace} rollout status deployment/{fullname}" in out  # NOTES.txt
    assert f"{namespace}/orpheus" in out

    with kube.api_client() as api:
        apps, core, rbac = client.AppsV1Api(api), client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        custom, ext = client.CustomObjectsApi(api), client.ApiextensionsV1Api(api)

        dep = apps.read_namespaced_deployment(fullname, namespace)
        assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
        pod = dep.spec.template.spec
        assert pod.service_account_name == fullname
        assert pod.containers[0].image == "ghcr.io/orpheus-tts/orpheus-tts-operator:0.1.0"
        env = {e.name: e.value for e in pod.containers[0].env}
        assert env["ORPHEUS_OPERATOR_RUNTIME_IMAGE"] == "ghcr.io/orpheus-tts/orpheus-tts-torch:0.1.0"
        assert env["ORPHEUS_OPERATOR_LOG_LEVEL"] == "DEBUG"
        core.read_namespaced_service_account(fullname, namespace)
        assert core.read_namespaced_service(fullname, namespace).spec.ports[0].port == 8080
        binding = rbac.read_cluster_role_binding(fullname)
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", fullname, namespace)]
        assert rbac.read_cluster_role(binding.role_ref.name).rules

        ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")  # installed from crds/
        instance = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orpheus")
        assert instance["spec"]["engine"]["backend"] == "torch"
        assert instance["spec"]["snac"]["maxBatch"] == 64  # defaulted by the CRD's schema on the server

        status = json.loads(kube.helm("status", release, "-n", namespace, "-o", "json").stdout)
        assert (status["info"]["status"], status["version"]) == ("deployed", 1)

        # Upgrade to the defaults plus two changes: the operator is reconfigured, the instance goes away.
        kube.helm("upgrade", release, str(CHART), "--namespace", namespace, "--set", "logLevel=WARNING,image.tag=0.2.0")
        dep = apps.read_namespaced_deployment(fullname, namespace)
        env = container_env(client.ApiClient().sanitize_for_serialization(dep))
        assert env["ORPHEUS_OPERATOR_LOG_LEVEL"] == "WARNING"
        assert env["ORPHEUS_OPERATOR_RUNTIME_IMAGE"] == "ghcr.io/orpheus-tts/orpheus-tts:0.1.0"
        assert dep.spec.template.spec.containers[0].image == "ghcr.io/orpheus-tts/orpheus-tts-operator:0.2.0"
        wait_for(
            lambda: gone(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orpheus")),
            timeout=60,
            what="helm to delete the dropped instance",
        )
        status = json.loads(kube.helm("status", release, "-n", namespace, "-o", "json").stdout)
        assert (status["info"]["status"], status["version"]) == ("deployed", 2)

        kube.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
        for read in (
            lambda: apps.read_namespaced_deployment(fullname, namespace),
            lambda: core.read_namespaced_service_account(fullname, namespace),
            lambda: core.read_namespaced_service(fullname, namespace),
            lambda: rbac.read_cluster_role_binding(fullname),
        ):
            wait_for(lambda read=read: gone(read), timeout=60, what="helm uninstall to delete the release's objects")
        ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")  # helm never deletes CRDs


def test_docs_sample_resources_pass_server_side_validation(kube, crd, namespace):
    """The OrpheusTTS examples a newcomer copies from docs/deploy.md are accepted by the real CRD."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    samples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", docs, flags=re.S)]
    samples = [s for s in samples if isinstance(s, dict) and s.get("kind") == "OrpheusTTS"]
    assert samples
    for sample in samples:
        sample["metadata"]["namespace"] = namespace
        with kube.api_client() as api:
            created = server_dry_run_create(api, sample)
        assert created["spec"]["engine"]["weightQuantization"] == "int4_awq"  # defaults filled in by the CRD


def test_docs_name_real_files():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for path in set(re.findall(r"(?:charts|images|docs)/[\w./-]+\.(?:yaml|md|Dockerfile)", docs)):
        assert (ROOT / path).exists(), path
