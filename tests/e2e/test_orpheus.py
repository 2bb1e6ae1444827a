"""The user's path on the real node, in order: install the chart (the operator as a pod, images built in this run),
apply an OrpheusTTS (tiny random-weight model, torch backend, no GPU) and watch it become Ready on its own, then
speak to it through the gateway from outside the cluster. The tiny model's audio is noise: the tests check the
audio's format and length, never its content.

Nothing here writes a Job, Pod, Deployment or OrpheusTTS status: the kubelet, the controllers and the operator do.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from container_images.oci import build_images
from k8s.control_plane import run_helm

from e2e import spillover
from e2e.cluster import NODE_IP, REPO, TRAEFIK_ADMIN, Cluster
from orpheus_operator.crd import HTTP_PORT

NAMESPACE = "orpheus-tts"
RELEASE = "orpheus-tts-operator"
NAME = "orpheus"
HOST = "tts.e2e.test"  # the Ingress host: clients connect to the gateway at NODE_IP with this Host header
ROUTE_HOST = "route.tts.e2e.test"  # the HTTPRoute's hostname, on the cluster's Gateway `default/e2e` (Traefik)
CHART = REPO / "charts/orpheus-tts-operator"
# The whole chain on 2 shared cores: the build Job's pod (tiny model, CPU), then the runtime pod's start and warmup.
READY_TIMEOUT_S = float(os.environ.get("ORPHEUS_E2E_READY_TIMEOUT", "600"))

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def images(cluster: Cluster) -> dict[str, str]:
    """Builds the operator and torch runtime images (images/build.sh, cached by their inputs) and imports them."""
    start = time.monotonic()
    out = build_images("operator", "torch")
    print(f"images built (or found cached) in {time.monotonic() - start:.0f}s: {out}")
    for kind in ("operator", "torch"):
        cluster.import_image(Path(out[f"{kind}_archive"]), out[f"{kind}_image"])
    # The image store is kept between runs: drop earlier builds' tags, several GB each, before they fill the disk.
    cluster.prune_images("localhost/orpheus-tts-", keep=[out["operator_image"], out["torch_image"]])
    return {"operator": out["operator_image"], "torch": out["torch_image"]}


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    state = cluster.load_state()
    return run_helm(
        Path(state["control_bin"]) / "helm",
        args,
        home=cluster.workdir / "helm",
        kubeconfig=cluster.admin_kubeconfig,
        timeout=timeout,
    )


def repo_and_tag(image: str) -> tuple[str, str]:
    repo, tag = image.rsplit(":", 1)
    return repo, tag


def orpheus_tts(replicas: int = 1) -> dict:
    """The OrpheusTTS users would write for a CPU-only endpoint, exposed through an Ingress."""
    small = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}}
    return {
        "apiVersion": "tts.orpheus.dev/v1alpha1",
        "kind": "OrpheusTTS",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"repo": "tiny-random"},
            "engine": {"backend": "torch", "weightQuantization": "none", "kvCacheDtype": "auto", "maxBatchSize": 4},
            "runtime": {
                "replicas": replicas,
                "gpus": 0,
                "resources": small,
                "shmSize": "256Mi",
                "affinity": {},
                "tolerations": [],
                "drainGraceSeconds": 10,
            },
            "build": {"gpus": 0, "resources": small},
            "storage": {"size": "1Gi", "accessMode": "ReadWriteOnce"},
            "ingress": {"enabled": True, "host": HOST, "className": "traefik"},
            # The same pods also through a Gateway API HTTPRoute (both exposures may be on at once).
            "gateway": {
                "enabled": True,
                "parentRefs": [{"name": "e2e", "namespace": "default"}],
                "hostnames": [ROUTE_HOST],
            },
        },
    }


@pytest.fixture(scope="session")
def installed(cluster: Cluster, images: dict[str, str]) -> Iterator[None]:
    """The chart installed into a namespace that enforces the `restricted` Pod Security Standard."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    operator_repo, operator_tag = repo_and_tag(images["operator"])
    torch_repo, torch_tag = repo_and_tag(images["torch"])
    helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        f"image.repository={operator_repo}",
        "--set",
        f"image.tag={operator_tag}",
        "--set",
        "runtime.default=torch",
        "--set",
        f"runtime.images.torch.repository={torch_repo}",
        "--set",
        f"runtime.images.torch.tag={torch_tag}",
        "--set",
        "logLevel=DEBUG",
        "--wait",
        "--timeout=180s",
    )
    yield


def test_chart_installs_the_operator_as_a_pod_under_restricted(cluster: Cluster, installed: None) -> None:
    pods = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    operator = [p for p in pods if p["metadata"]["name"].startswith(RELEASE)]
    assert operator, [p["metadata"]["name"] for p in pods]
    pod = operator[0]
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"].startswith(RELEASE)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    labels = json.loads(cluster.kubectl("get", "ns", NAMESPACE, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


class PhaseRecorder:
    """Records every phase the OrpheusTTS status shows, polling in the background (the test only reads)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.phases, self.stop = cluster, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            proc = self.cluster.kubectl(
                "-n", NAMESPACE, "get", "otts", NAME, "-o", "jsonpath={.status.phase}", check=False
            )
            phase = proc.stdout.strip()
            if phase and (not self.phases or self.phases[-1] != phase):
                self.phases.append(phase)
            time.sleep(0.5)

    def wait_for(self, phase: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.phases and self.phases[-1] == phase:
                return
            assert "Failed" not in self.phases, f"the OrpheusTTS failed; phases: {self.phases}"
            time.sleep(1)
        raise AssertionError(f"not {phase} after {timeout:.0f}s; phases so far: {self.phases}")


@pytest.fixture(scope="session")
def ready(cluster: Cluster, installed: None) -> list[str]:
    """Applies the OrpheusTTS and waits until the operator reports Ready; returns the phases it went through."""
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(orpheus_tts()))
    recorder = PhaseRecorder(cluster)
    try:
        recorder.wait_for("Ready", READY_TIMEOUT_S)
    finally:
        recorder.stop.set()
        recorder.thread.join()
    return recorder.phases


def test_orpheustts_goes_building_deploying_ready_on_its_own(cluster: Cluster, ready: list[str]) -> None:
    order = [p for p in ready if p in ("Building", "Deploying", "Ready")]
    assert order[-1] == "Ready"
    assert order.index("Building") < order.index("Deploying") < order.index("Ready"), ready
    # The build Job really ran `orpheus-tts build-engine` in a pod that completed, on a bound PersistentVolume.
    jobs = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "jobs", "-o", "json").stdout)["items"]
    assert any(j["status"].get("succeeded") == 1 for j in jobs), [j["status"] for j in jobs]
    command = json.dumps(jobs[0]["spec"]["template"]["spec"]["containers"][0])
    assert "build-engine" in command
    pvcs = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pvc", "-o", "json").stdout)["items"]
    assert pvcs and all(p["status"]["phase"] == "Bound" for p in pvcs)


def gateway_get(path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{NODE_IP}{path}", headers={"Host": HOST})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.status, resp.read()


def wav_info(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def speak_through_gateway(host: str) -> bytes:
    """One utterance over a WebSocket to the gateway at NODE_IP:80, routed on `host`; the PCM it streamed."""
    from websockets.asyncio.client import connect

    async def speak() -> bytes:
        # The TCP connection goes to the gateway; the URI's host is the Host header the route matches on.
        async with connect(f"ws://{host}/ws/tts", host=NODE_IP, port=80, max_size=None, open_timeout=30) as ws:
            await ws.send(json.dumps({"text": "Hello from the end-to-end test.", "voice": "tara", "max_tokens": 120}))
            chunks = []
            async for message in ws:
                if isinstance(message, bytes):
                    if message == b"__END__":
                        break
                    chunks.append(message)
                else:
                    assert json.loads(message).get("type") != "error", message
            return b"".join(chunks)

    return asyncio.run(asyncio.wait_for(speak(), 180))


def assert_valid_pcm(pcm: bytes) -> None:
    from orpheus_tts.speech.wav import SAMPLE_RATE, wav_header

    assert pcm and len(pcm) % 2 == 0
    channels, width, rate, frames = wav_info(wav_header(len(pcm), SAMPLE_RATE) + pcm)
    assert (channels, width, rate) == (1, 2, SAMPLE_RATE) and frames == len(pcm) // 2


def test_websocket_through_the_gateway_gets_a_valid_wav(ready: list[str]) -> None:
    assert_valid_pcm(speak_through_gateway(HOST))


def test_websocket_through_an_httproute(cluster: Cluster, ready: list[str]) -> None:
    """spec.gateway: the operator's HTTPRoute is accepted by the Gateway's controller and carries WebSockets."""
    route = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "httproute", NAME, "-o", "json").stdout)
    assert [(r["name"], r["namespace"]) for r in route["spec"]["parentRefs"]] == [("e2e", "default")]

    def accepted() -> bool:
        current = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "httproute", NAME, "-o", "json").stdout)
        parents = current.get("status", {}).get("parents", [])
        return any(c["type"] == "Accepted" and c["status"] == "True" for p in parents for c in p["conditions"])

    wait_until(accepted, 60, "the HTTPRoute accepted by Traefik")
    status = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "otts", NAME, "-o", "json").stdout)["status"]
    assert status["endpoint"] == f"https://{ROUTE_HOST}/"
    assert_valid_pcm(speak_through_gateway(ROUTE_HOST))


def test_openai_speech_through_the_gateway(ready: list[str]) -> None:
    import openai

    from orpheus_tts.speech.wav import SAMPLE_RATE

    client = openai.OpenAI(
        base_url=f"http://{NODE_IP}/v1", api_key="unused", default_headers={"Host": HOST}, timeout=180
    )
    response = client.audio.speech.create(
        model="orpheus", voice="tara", input="Hello through the gateway.", response_format="wav"
    )
    channels, width, rate, frames = wav_info(response.content)
    assert (channels, width, rate) == (1, 2, SAMPLE_RATE) and frames > 0


def test_metrics_are_scraped_through_the_gateway(ready: list[str]) -> None:
    status, body = gateway_get("/metrics")
    assert status == 200
    text = body.decode()
    assert "# TYPE" in text and "orpheus" in text


# ---- rollouts, failures, uninstall: with a client streaming all the while -----------------------------------------


class Streamer:
    """Clients streaming utterances through the gateway in a loop, counting completed and failed streams.

    retry=False: every failed stream counts (a rollout must fail none). retry=True: a client retries a failed stream
    up to `retries` times before counting it as failed (what clients of a killed pod do)."""

    def __init__(self, clients: int = 2, retry: bool = False, retries: int = 20) -> None:
        self.ok, self.failed, self.retried, self.errors = 0, 0, 0, []
        self.retry, self.retries = retry, retries
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    @staticmethod
    def stream_once() -> int:
        import socket

        from websockets.sync.client import connect

        sock = socket.create_connection((NODE_IP, 80), timeout=30)
        with connect(f"ws://{HOST}/ws/tts", sock=sock, max_size=None, open_timeout=30) as ws:
            ws.send(json.dumps({"text": "Streaming while the cluster changes.", "voice": "tara", "max_tokens": 60}))
            size = 0
            while True:
                message = ws.recv(timeout=120)
                if isinstance(message, bytes):
                    if message == b"__END__":
                        return size
                    size += len(message)
                elif json.loads(message).get("type") == "error":
                    raise RuntimeError(message)

    def _run(self) -> None:
        while not self.stop.is_set():
            for attempt in range(self.retries + 1 if self.retry else 1):
                try:
                    self.stream_once()
                    with self.lock:
                        self.ok += 1
                    break
                except Exception as e:
                    with self.lock:
                        self.errors.append(repr(e)[:300])
                        self.retried += 1
                    if attempt < self.retries and self.retry:
                        time.sleep(1)
            else:
                with self.lock:
                    self.failed += 1

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=300)

    def __repr__(self) -> str:
        return f"Streamer(ok={self.ok}, failed={self.failed}, retried={self.retried}, errors={self.errors[-5:]})"


def otts_status(cluster: Cluster) -> dict:
    return json.loads(cluster.kubectl("-n", NAMESPACE, "get", "otts", NAME, "-o", "json").stdout).get("status", {})


def patch_otts(cluster: Cluster, spec: dict) -> None:
    cluster.kubectl("-n", NAMESPACE, "patch", "otts", NAME, "--type=merge", "-p", json.dumps({"spec": spec}))


def runtime_pods(cluster: Cluster) -> list[dict]:
    pods = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    return [p for p in pods if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "server"]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def settled(cluster: Cluster, replicas: int) -> bool:
    """Ready, all replicas ready, and the Deployment's rollout finished (no old pods left)."""
    status = otts_status(cluster)
    if status.get("phase") != "Ready" or status.get("readyReplicas") != replicas:
        return False
    pods = runtime_pods(cluster)
    return len(pods) == replicas and all(not p["metadata"].get("deletionTimestamp") for p in pods)


@pytest.fixture(scope="session")
def two_replicas(cluster: Cluster, ready: list[str]) -> None:
    patch_otts(cluster, {"runtime": {"replicas": 2}})
    wait_until(lambda: settled(cluster, 2), READY_TIMEOUT_S, "2 ready replicas")


def test_runtime_only_change_rolls_with_zero_failed_streams(cluster: Cluster, two_replicas: None) -> None:
    before = {p["metadata"]["name"] for p in runtime_pods(cluster)}
    engine = otts_status(cluster).get("servingEngineHash")
    streamer = Streamer()
    try:
        wait_until(lambda: streamer.ok >= 2, 120, "streams before the change")
        patch_otts(cluster, {"runtime": {"env": [{"name": "ORPHEUS_E2E_ROLL", "value": "1"}]}})
        wait_until(
            lambda: settled(cluster, 2) and not before & {p["metadata"]["name"] for p in runtime_pods(cluster)},
            READY_TIMEOUT_S,
            "every runtime pod replaced",
        )
        ok_at_swap = streamer.ok
        wait_until(lambda: streamer.ok >= ok_at_swap + 2, 120, "streams after the rollout")
    finally:
        streamer.finish()
    assert streamer.failed == 0 and streamer.retried == 0, streamer
    assert otts_status(cluster).get("servingEngineHash") == engine  # no rebuild for a runtime-only change


def test_rebuild_worthy_change_builds_while_old_pods_serve(cluster: Cluster, two_replicas: None) -> None:
    old = otts_status(cluster)
    streamer = Streamer()
    try:
        wait_until(lambda: streamer.ok >= 2, 120, "streams before the change")
        patch_otts(cluster, {"engine": {"maxBatchSize": 3}})
        recorder = PhaseRecorder(cluster)
        try:
            wait_until(
                lambda: otts_status(cluster).get("engineHash") not in (None, old.get("engineHash")),
                120,
                "a new engine hash",
            )
            wait_until(
                lambda: (
                    settled(cluster, 2) and otts_status(cluster).get("servingEngineHash") != old["servingEngineHash"]
                ),
                READY_TIMEOUT_S,
                "the new engine serving",
            )
        finally:
            recorder.stop.set()
            recorder.thread.join()
        ok_at_swap = streamer.ok
        wait_until(lambda: streamer.ok >= ok_at_swap + 2, 120, "streams after the swap")
    finally:
        streamer.finish()
    assert "Building" in recorder.phases, recorder.phases
    assert streamer.failed == 0 and streamer.retried == 0, streamer


def test_killed_runtime_pod_is_replaced_and_retrying_clients_are_served(cluster: Cluster, two_replicas: None) -> None:
    victim = runtime_pods(cluster)[0]["metadata"]["name"]
    streamer = Streamer(retry=True)
    try:
        wait_until(lambda: streamer.ok >= 2, 120, "streams before the kill")
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", victim, "--grace-period=0", "--force")
        wait_until(
            lambda: settled(cluster, 2) and victim not in {p["metadata"]["name"] for p in runtime_pods(cluster)},
            READY_TIMEOUT_S,
            "a replacement pod ready",
        )
        ok_after = streamer.ok
        wait_until(lambda: streamer.ok >= ok_after + 2, 120, "streams after the replacement")
    finally:
        streamer.finish()
    assert streamer.failed == 0, streamer


def test_operator_killed_mid_build_converges(cluster: Cluster, two_replicas: None) -> None:
    old = otts_status(cluster)
    patch_otts(cluster, {"engine": {"maxBatchSize": 2}})
    wait_until(lambda: otts_status(cluster).get("phase") == "Building", 120, "the build to start")
    cluster.kubectl(
        "-n", NAMESPACE, "delete", "pod", "-l", "app.kubernetes.io/name=orpheus-tts-operator", "--grace-period=0",
        "--force",
    )  # fmt: skip
    wait_until(
        lambda: settled(cluster, 2) and otts_status(cluster).get("servingEngineHash") != old["servingEngineHash"],
        READY_TIMEOUT_S,
        "the new engine serving after the operator's restart",
    )
    jobs = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "jobs", "-o", "json").stdout)["items"]
    assert all(j["status"].get("failed", 0) == 0 for j in jobs), [j["status"] for j in jobs]


# ---- load-aware readiness: spill-over through the gateway (issue #12) ---------------------------------------------

SPILL_STREAMS_PER_POD = 5  # capacity 15: 90% is 14 clients (93%), 120% is 18 (3 too many)


def readyz(ip: str) -> tuple[int, dict]:
    """A pod's own /readyz, straight to its IP from the node: (status, body); "full" answers 503 with a body."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{HTTP_PORT}/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read() or b"{}")


def traefik_backends() -> set[str]:
    """The pod IPs Traefik routes the Ingress's Service to now (its API, on the loopback admin entrypoint)."""
    with urllib.request.urlopen(f"http://{TRAEFIK_ADMIN}/api/http/services?per_page=1000", timeout=10) as r:
        services = json.loads(r.read())
    ours = [s for s in services if s["name"] == f"{NAMESPACE}-{NAME}-http@kubernetes"]  # <namespace>-<svc>-<port>
    servers = [srv["url"] for s in ours for srv in (s.get("loadBalancer") or {}).get("servers") or []]
    return {urllib.parse.urlsplit(url).hostname for url in servers}


def test_spill_over_by_readiness_through_the_gateway(cluster: Cluster, ready: list[str]) -> None:
    """Issue #12 on the real node: 3 runtime pods with spec.runtime.loadAwareReadiness and 5 stream places each,
    behind their Service and Traefik, and real `websockets` clients of the gateway. The scenario (fill; departures
    that leave one pod full; demand to 90%, then 120% of the capacity; everyone admitted speaks again) and why its
    timing is deterministic are in spillover.py: each client arrives once the previous one was answered and Traefik
    routes to exactly the pods whose /readyz is 200 (kubelet probe every 2 s, one miss, then EndpointSlice and
    Traefik's watch); the longest such wait is printed. Idle sockets hold their places (the idle timeout is off),
    and each utterance is 28 tokens (4 frames), so the whole ramp costs little CPU."""
    spill = {
        "replicas": 3,
        "loadAwareReadiness": True,
        "env": [
            {"name": "ORPHEUS_MAX_STREAMS", "value": str(SPILL_STREAMS_PER_POD)},
            {"name": "ORPHEUS_WS_IDLE_TIMEOUT_S", "value": "0"},  # a held socket keeps its place between utterances
        ],
    }
    patch_otts(cluster, {"runtime": spill})

    def rolled() -> bool:
        pods = runtime_pods(cluster)
        env = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in pods]
        return settled(cluster, 3) and all(
            e.get("ORPHEUS_LOAD_AWARE_READINESS") == "1" and e.get("ORPHEUS_MAX_STREAMS") == str(SPILL_STREAMS_PER_POD)
            for e in env
        )

    wait_until(rolled, READY_TIMEOUT_S, "3 pods with load-aware readiness")
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in runtime_pods(cluster)}
    probe = runtime_pods(cluster)[0]["spec"]["containers"][0]["readinessProbe"]
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (2, 1), probe

    def loads() -> dict[str, int]:
        return {name: readyz(ip)[1]["active_streams"] for name, ip in pods.items()}

    def routed_as_ready() -> bool:
        return traefik_backends() == {ip for ip in pods.values() if readyz(ip)[0] == 200}

    fleet = spillover.Fleet(spillover.Gateway(HOST, NODE_IP, 80), loads, routed_as_ready)
    ramp = asyncio.run(spillover.run(fleet, SPILL_STREAMS_PER_POD, settle_timeout=60))
    print(ramp.summary())
    assert spillover.problems(ramp) == [], ramp.summary()
    # Every place freed: the pods are ready again and Traefik routes to all three.
    wait_until(lambda: sum(loads().values()) == 0 and traefik_backends() == set(pods.values()), 60, "all pods ready")


def test_build_job_that_cannot_start_shows_the_reason(cluster: Cluster, installed: None) -> None:
    broken = orpheus_tts()
    broken["metadata"]["name"] = "unstartable"
    broken["spec"]["build"]["image"] = "localhost/orpheus-tts-does-not-exist:e2e"
    broken["spec"].pop("ingress")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(broken))
    try:

        def reason() -> str:
            doc = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "otts", "unstartable", "-o", "json").stdout)
            status = doc.get("status", {})
            text = json.dumps(status)
            return text if status.get("phase") == "Pending" and ("ImagePull" in text or "ErrImage" in text) else ""

        wait_until(reason, 180, "phase Pending with the image pull reason")
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "otts", "unstartable", "--timeout=120s")
        selector = "app.kubernetes.io/instance=unstartable"
        cluster.kubectl("-n", NAMESPACE, "wait", "--for=delete", "pod", "-l", selector, "--timeout=120s", check=False)


def test_helm_uninstall_leaves_nothing_stuck_and_reinstall_works(
    cluster: Cluster, images: dict[str, str], installed: None
) -> None:
    cluster.kubectl("-n", NAMESPACE, "delete", "otts", "--all", "--timeout=120s")
    helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout=120s")

    def remaining() -> list[str]:
        kinds = "otts,deployments,replicasets,pods,jobs,services,ingresses,configmaps,serviceaccounts,roles"
        items = json.loads(cluster.kubectl("-n", NAMESPACE, "get", kinds, "-o", "json").stdout)["items"]
        ignore = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
        return [
            f"{o['kind']}/{o['metadata']['name']}" for o in items if (o["kind"], o["metadata"]["name"]) not in ignore
        ]

    # The garbage collector removes what the deleted objects owned; nothing may stay behind, terminating or not.
    wait_until(lambda: not remaining(), 180, f"the namespace to empty (left: {remaining()})")
    # The engines PVC stays (spec.storage.retainOnDelete), bound and not terminating: a re-install reuses it.
    pvcs = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pvc", "-o", "json").stdout)["items"]
    assert all(not p["metadata"].get("deletionTimestamp") for p in pvcs), pvcs
    operator_repo, operator_tag = repo_and_tag(images["operator"])
    torch_repo, torch_tag = repo_and_tag(images["torch"])
    helm(
        cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--set", f"image.repository={operator_repo}", "--set", f"image.tag={operator_tag}",
        "--set", "runtime.default=torch",
        "--set", f"runtime.images.torch.repository={torch_repo}", "--set", f"runtime.images.torch.tag={torch_tag}",
        "--wait", "--timeout=180s",
    )  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(orpheus_tts()))
    wait_until(lambda: settled(cluster, 1), READY_TIMEOUT_S, "Ready again after the re-install")
    status, body = gateway_get("/metrics")
    assert status == 200 and body
