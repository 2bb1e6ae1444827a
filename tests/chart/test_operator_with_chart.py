"""After `helm install`, the operator runs as the chart configures it: under the chart's ServiceAccount and RBAC
(a TokenRequest token: nothing more than the chart grants), with the Deployment's environment. It must reconcile
the instance the chart created. The operator is a local process: the test control plane has no kubelet."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import pytest
from k8s.control_plane import free_port, stop_process
from k8s.waiting import wait_for
from kubernetes import client

from chart.support import CHART, CPU_VALUES

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "tts.orpheus.dev", "v1alpha1", "orpheusttses"


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("scope", ["namespaced", "clusterwide"])
def test_operator_reconciles_the_chart_instance_with_chart_rbac(kube, namespace, tmp_path, scope):
    release = namespace
    fullname = f"{release}-orpheus-tts-operator"
    watch = ["--set", f"watchNamespaces={{{namespace}}}"] if scope == "namespaced" else []
    kube.helm("install", release, str(CHART), "--namespace", namespace, "-f", str(CPU_VALUES), *watch)

    with kube.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        batch, custom = client.BatchV1Api(api), client.CustomObjectsApi(api)
        container = apps.read_namespaced_deployment(fullname, namespace).spec.template.spec.containers[0]
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORPHEUS_OPERATOR_")}
        env.update({e.name: e.value for e in container.env})  # exactly the chart's configuration...
        env.update(
            ORPHEUS_OPERATOR_HEALTH_PORT=str(port),  # ...but a free port on this machine
            KUBECONFIG=str(kube.service_account_kubeconfig(namespace, fullname)),
        )
        args = [] if scope == "clusterwide" else ["--namespace", namespace]
        log = tmp_path / "operator.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [shutil.which("orpheus-operator") or "orpheus-operator", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: health_ok(port), timeout=60, what="the operator's /healthz")
            wait_for(
                lambda: core.list_namespaced_persistent_volume_claim(namespace).items,
                timeout=60,
                what="the engines PVC",
            )
            jobs = wait_for(lambda: batch.list_namespaced_job(namespace).items, timeout=60, what="the build Job")
            phase = wait_for(
                lambda: (
                    custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orpheus")
                    .get("status", {})
                    .get("phase")
                    == "Building"
                ),
                timeout=60,
                what="status.phase Building",
            )
            assert phase
            (job,) = jobs
            pod = job.spec.template.spec
            assert pod.containers[0].image == container_image(container, "ORPHEUS_OPERATOR_RUNTIME_IMAGE")
            assert core.read_namespaced_persistent_volume_claim("orpheus-engines", namespace).spec.access_modes == [
                "ReadWriteOnce"
            ]

            # Deleting the instance: the operator (under the same RBAC) removes its finalizer, so it goes.
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orpheus")
            wait_for(
                lambda: (
                    not [o for o in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]]
                ),
                timeout=60,
                what="the instance to be deleted",
            )
            assert proc.poll() is None, "the operator exited"
        except BaseException:
            print(log.read_text(errors="replace")[-6000:])
            raise
        finally:
            stop_process(proc, timeout=20)
        forbidden = [line for line in log.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]
        assert not forbidden, "the operator hit RBAC denials:\n" + "\n".join(forbidden[:10])


def container_image(container, env_name: str) -> str:
    return next(e.value for e in container.env if e.name == env_name)
