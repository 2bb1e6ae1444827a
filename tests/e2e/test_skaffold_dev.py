"""Issue 10, step 7: `skaffold dev -p cpu` against the real node.

skaffold v2 (built from the Go module proxy by tests/k8s/build-skaffold.sh) builds both images with the `cpu`
profile's custom builder (images/build.sh --skaffold: buildah, then an import into the node's containerd), installs
the chart with ci/cpu-values.yaml (tiny random-weight model, torch backend, no GPU), and a change to a runtime source
file reaches the running server pod, through skaffold's file sync and without a rebuild, within SYNC_TIMEOUT_S.

skaffold runs on a copy of the checkout, so the edit never touches the real one. test_orpheus.py leaves its own
release behind (same name and namespace as the profile's): this test removes it first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_images.oci import buildah
from k8s.control_plane import run_helm

from e2e.cluster import REPO, Cluster
from e2e.test_orpheus import NAME, NAMESPACE, RELEASE

# The first `skaffold dev` in a run builds (cached: seconds; cold: the torch image, see docs/images.md), imports
# into containerd, installs, and waits for the operator's build Job and the server pod on 2 shared cores.
READY_TIMEOUT_S = float(os.environ.get("ORPHEUS_E2E_SKAFFOLD_TIMEOUT", "1500"))
SYNC_TIMEOUT_S = 60  # skaffold polls every 500 ms here; a sync is one `kubectl exec ... tar`
PROBED_FILE = "runtime/orpheus_tts/__init__.py"

pytestmark = pytest.mark.e2e


@pytest.fixture
def checkout_copy(tmp_path: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored), as a build context skaffold may watch."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    copy = tmp_path / "checkout"
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    return copy


def otts_phase(cluster: Cluster) -> str | None:
    proc = cluster.kubectl("-n", NAMESPACE, "get", "otts", NAME, "-o", "json", check=False)
    return json.loads(proc.stdout).get("status", {}).get("phase") if proc.returncode == 0 else None


def server_pods(cluster: Cluster) -> list[dict]:
    pods = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    return [
        p
        for p in pods
        if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "server"
        and p["status"].get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    ]


def wait_for(check, timeout: float, what: str, skaffold: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert skaffold.poll() is None, f"skaffold exited ({skaffold.returncode}) before {what}:\n{tail(log)}"
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"not {what} after {timeout:.0f}s; skaffold's log ends:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def skaffold_dev(cluster: Cluster, checkout_copy: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`skaffold dev -p cpu` running in the checkout copy; interrupted (skaffold then uninstalls) after the test."""
    state = cluster.load_state()
    cluster.kubectl("-n", NAMESPACE, "delete", "otts", "--all", "--timeout=180s", check=False, timeout=240)
    run_helm(
        Path(state["control_bin"]) / "helm",
        ["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout=180s"],
        home=cluster.workdir / "helm",
        kubeconfig=cluster.admin_kubeconfig,
        check=False,
        timeout=240,
    )
    binary = subprocess.run(
        ["bash", str(REPO / "tests/k8s/build-skaffold.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.split()[-1]
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.admin_kubeconfig),
        "ORPHEUS_CONTAINERD_ADDRESS": str(cluster.containerd_socket),
        "ORPHEUS_CTR": cluster.binary("ctr"),
        "PATH": f"{state['node_bin']}:{state['control_bin']}:{os.environ['PATH']}",  # kubectl, helm
        "SKAFFOLD_UPDATE_CHECK": "false",
    }
    # skaffold's local builder asks a Docker API about the images it built: podman serves one on buildah's storage.
    socket = tmp_path / "docker.sock"
    api = subprocess.Popen(["bash", str(REPO / "images/build.sh"), "--docker-api", str(socket)])
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline and api.poll() is None:
        time.sleep(0.2)
    env["DOCKER_HOST"] = f"unix://{socket}"
    log = tmp_path / "skaffold.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary, "dev", "-p", "cpu",
                "--config", str(REPO / "scripts/skaffold-global-config.yaml"),
                "--port-forward=off", "--trigger=polling", "--watch-poll-interval=500", "--cleanup=true",
                "--cache-artifacts=false",  # images/build.sh caches by input hash; no Docker to look images up in
                # skaffold dev removes the images it built when it exits, through the Docker API, that is from
                # images/build.sh's own storage (podman serves it): with them went every cached layer, and the
                # next run rebuilt the torch image from nothing.
                "--no-prune",
            ],
            cwd=checkout_copy, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # skaffold's Ctrl-C: stop watching, uninstall the release
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        api.terminate()
        api.wait(timeout=30)
        print(f"skaffold's log ends:\n{tail(log)}")


def test_skaffold_dev_builds_deploys_and_syncs_a_source_change(
    cluster: Cluster, checkout_copy: Path, skaffold_dev: tuple[subprocess.Popen, Path]
) -> None:
    proc, log = skaffold_dev
    start = time.monotonic()
    wait_for(lambda: otts_phase(cluster) == "Ready", READY_TIMEOUT_S, "Ready", proc, log)
    (pod,) = wait_for(lambda: server_pods(cluster), 120, "a running server pod", proc, log)
    print(f"skaffold dev: built, deployed and Ready in {time.monotonic() - start:.0f}s")

    # The pod runs the image skaffold built and loaded into containerd, under skaffold's tag.
    image = pod["spec"]["containers"][0]["image"]
    assert image.startswith("localhost/orpheus-tts-torch:"), image
    assert cluster.has_image(image)
    assert "Build [localhost/orpheus-tts-torch] succeeded" in log.read_text(errors="replace")

    marker = f"# skaffold sync probe {uuid.uuid4().hex}"
    with (checkout_copy / PROBED_FILE).open("a") as f:
        f.write(f"\n{marker}\n")
    edited = time.monotonic()

    def synced() -> bool:
        proc_ = cluster.kubectl(
            "-n", NAMESPACE, "exec", pod["metadata"]["name"], "--", "grep", "-qF", marker, f"/app/{PROBED_FILE}",
            check=False,
        )  # fmt: skip
        return proc_.returncode == 0

    wait_for(synced, SYNC_TIMEOUT_S, f"synced into /app/{PROBED_FILE}", proc, log)
    print(f"the edit reached the pod in {time.monotonic() - edited:.1f}s")
    text = log.read_text(errors="replace")
    assert "Syncing 1 files for" in text, tail(log)
    # Synced, not rebuilt: the same pod still serves.
    assert pod["metadata"]["name"] in {p["metadata"]["name"] for p in server_pods(cluster)}

    # Ctrl-C: skaffold uninstalls and exits, and the image it built stays in images/build.sh's storage (its layers
    # are the next build's cache).
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=300)
    names = buildah("images", "--noheading", "--format", "{{.Name}}:{{.Tag}}").split()
    assert any(name.startswith("localhost/orpheus-tts-torch:") for name in names), (names, tail(log))
