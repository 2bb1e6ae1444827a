"""The e2e cluster itself: the node runs pods, cluster DNS and Services work, and no cluster packet can leave the
machine through its external interface."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import yaml

from e2e.cluster import (
    API_SERVICE_IP,
    GUARD_CHAINS,
    NODE_BRIDGE,
    NODE_NAME,
    POD_CIDR,
    SERVICE_CIDR,
    Cluster,
    guard_counters,
    sh,
)


def busybox_image(cluster: Cluster) -> str:
    state = cluster.load_state()
    name = Path(state["node_bin"], "busybox.image").read_text().strip()
    cluster.import_image(Path(state["node_bin"], "busybox.tar"), name)
    return name


def apply(cluster: Cluster, *docs: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def wait_pod_done(cluster: Cluster, ns: str, name: str, timeout: float = 90) -> str:
    """Waits for a pod to finish; returns its logs, and fails (with them) unless it Succeeded."""
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl("-n", ns, "get", "pod", name, "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    logs = cluster.kubectl("-n", ns, "logs", name, check=False).stdout
    assert phase == "Succeeded", f"pod {ns}/{name} ended {phase or 'not at all'}; logs:\n{logs}"
    return logs


def client_pod(image: str, name: str, script: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": image, "command": ["/bin/busybox", "sh", "-c", script]}],
        },
    }


def namespaced(ns: str, doc: dict) -> dict:
    return {**doc, "metadata": {**doc["metadata"], "namespace": ns}}


def test_node_is_ready_and_runs_the_pinned_kubernetes(cluster: Cluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.37.")
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert {"type": "InternalIP", "address": "10.201.0.1"} in node["status"]["addresses"]


def test_pods_resolve_names_and_reach_services(cluster: Cluster) -> None:
    image = busybox_image(cluster)
    ns = "smoke"
    cluster.kubectl("create", "namespace", ns)
    labels = {"app": "web"}
    server = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "httpd",
                            "image": image,
                            "command": [
                                "/bin/busybox",
                                "sh",
                                "-c",
                                "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && "
                                "exec /bin/busybox httpd -f -p 8080 -h /tmp/www",
                            ],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        }
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    apply(cluster, server, service)
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/web", "--timeout=90s")
    script = (
        "set -e; nslookup web.smoke.svc.cluster.local; nslookup kubernetes.default.svc.cluster.local; "
        "wget -qO- http://web/"
    )
    apply(cluster, namespaced(ns, client_pod(image, "client", script)))
    logs = wait_pod_done(cluster, ns, "client")
    assert "hello-from-web" in logs
    assert API_SERVICE_IP in logs  # kubernetes.default resolved to the first Service address
    # From the host too: kube-proxy's OUTPUT rules carry the ClusterIP to the pod.
    ip = cluster.kubectl("-n", ns, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    with urllib.request.urlopen(f"http://{ip}/", timeout=10) as resp:
        assert resp.read().strip() == b"hello-from-web"
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_no_cluster_packet_leaves_through_the_external_interface(cluster: Cluster) -> None:
    ext = cluster.load_state()["external"]
    # The Service and pod ranges never follow the default route.
    for cidr in (SERVICE_CIDR, POD_CIDR):
        probe = cidr.replace(".0/24", ".250")
        route = sh("ip", "-j", "route", "get", probe).stdout
        assert json.loads(route)[0]["dev"] != ext, route
    assert json.loads(sh("ip", "-j", "route", "get", "10.203.0.250").stdout)[0]["dev"] == NODE_BRIDGE
    # The drop rules are hooked first in mangle, before anything kube-proxy or kubelet add elsewhere.
    for hook, chain in GUARD_CHAINS.items():
        first = sh("iptables", "-w", "-t", "mangle", "-S", hook).stdout.splitlines()[1]
        assert first == f"-A {hook} -j {chain}"
    before = guard_counters()

    # A ClusterIP nobody has allocated (so kube-proxy has no rule for it) and one whose Service has no endpoints.
    image = busybox_image(cluster)
    ns = "guard"
    cluster.kubectl("create", "namespace", ns)
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": ns},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80}]},
        },
    )
    no_endpoints = cluster.kubectl("-n", ns, "get", "svc", "nobody", "-o", "jsonpath={.spec.clusterIP}").stdout
    for ip in ("10.203.0.250", no_endpoints):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, 80)) != 0  # refused or timed out, locally
    # From a pod: the same two, and an address outside the cluster (the external interface's gateway).
    gateway = json.loads(sh("ip", "-j", "route", "show", "default").stdout)[0]["gateway"]
    # (busybox's own `wget -T` crashes: `timeout` bounds each try instead.)
    script = " ; ".join(f"timeout 3 wget -qO- http://{ip}/" for ip in ("10.203.0.250", no_endpoints, gateway))
    script += " ; echo attempted"
    apply(cluster, namespaced(ns, client_pod(image, "prober", script)))
    assert "attempted" in wait_pod_done(cluster, ns, "prober")
    after = guard_counters()
    # Egress: nothing from or to a cluster range reached the external interface's output (those counters would
    # count it, as the last line of defence); the pod's try at an outside address was dropped while forwarding.
    assert after[GUARD_CHAINS["POSTROUTING"]] == before[GUARD_CHAINS["POSTROUTING"]]
    assert sum(after[GUARD_CHAINS["FORWARD"]]) > sum(before[GUARD_CHAINS["FORWARD"]])
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
