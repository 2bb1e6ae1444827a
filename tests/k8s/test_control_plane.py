"""Smoke tests of the test control plane: RBAC with ServiceAccount tokens, garbage collection, namespace deletion."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from k8s.waiting import gone, wait_for

pytestmark = pytest.mark.k8s


def test_admin_is_cluster_admin(kube):
    with kube.api_client() as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
        assert "system:masters" in review.status.user_info.groups
        version = client.VersionApi(api).get_code()
        assert version.git_version.startswith("v1.")


def test_service_account_token_is_limited_to_its_role(kube, namespace):
    with kube.api_client() as api:
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "configmap-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )

    with kube.api_client(kube.service_account_kubeconfig(namespace, "reader")) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"
        core = client.CoreV1Api(api)
        core.list_namespaced_config_map(namespace)  # allowed by the Role
        for forbidden in (
            lambda: core.list_namespaced_secret(namespace),  # other resource
            lambda: core.list_namespaced_config_map("default"),  # other namespace
            lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}}),  # other verb
        ):
            with pytest.raises(ApiException) as err:
                forbidden()
            assert err.value.status == 403


def test_garbage_collector_deletes_owned_objects(kube, namespace):
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": "owned",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                    ],
                }
            },
        )
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "unrelated"}})

        core.delete_namespaced_config_map("owner", namespace)
        wait_for(
            lambda: gone(lambda: core.read_namespaced_config_map("owned", namespace)),
            timeout=60,
            what="the garbage collector to delete the owned ConfigMap",
        )
        core.read_namespaced_config_map("unrelated", namespace)


def test_namespace_deletion_completes(kube):
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "doomed"}})
        core.create_namespaced_config_map("doomed", {"metadata": {"name": "content"}})
        core.delete_namespace("doomed")
        wait_for(
            lambda: gone(lambda: core.read_namespace("doomed")),
            timeout=60,
            what="the namespace controller to finish deleting the namespace",
        )
