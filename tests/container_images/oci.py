"""Builds the images (images/build.sh) and runs them the way a `restricted` pod runs them, with runc and no cluster.

A container here gets what the kubelet gives the operand pods (see the pod contract in docs/deploy.md): the image's
entrypoint, environment, working directory and user (UID/GID 10001), a read-only root filesystem, no capabilities,
no new privileges, and writable mounts only at /tmp (tmpfs), /home/orpheus/.cache and /engines (host directories,
like emptyDirs and the engine volume). It shares the host's network namespace, so a server in it listens on the
host's 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "images" / "build.sh"
UID = GID = 10001


# The end of each failed build's log. A session fixture's error is repeated for every test that uses it, and its
# captured log lands in the middle of a long report; tests/conftest.py prints these last, next to the summary.
BUILD_FAILURES: list[str] = []


def build_images(*names: str) -> dict[str, str]:
    """images/build.sh NAMES -> its `key=value` lines (operator_image, operator_archive, torch_image, ...)."""
    proc = subprocess.run(["bash", str(BUILD), *names], capture_output=True, text=True, timeout=3600, check=False)
    sys.stderr.write(proc.stderr)  # the whole log, in the test's captured output
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-40:])
        BUILD_FAILURES.append(
            f"images/build.sh {' '.join(names)} exited {proc.returncode}; the end of its log:\n{tail}"
        )
        raise RuntimeError(f"images/build.sh exited {proc.returncode} (the end of its log follows the errors)")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def buildah(*args: str) -> str:
    """buildah on images/build.sh's storage."""
    return subprocess.run(
        ["bash", str(BUILD), "--buildah", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def inspect(ref: str) -> dict:
    """buildah's description of an image (FromImageID, OCIv1: the OCI image config, ...)."""
    return json.loads(buildah("inspect", "--type", "image", ref))


def image_config(ref: str) -> dict:
    """The OCI image config's `config` (Env, Entrypoint, Cmd, User, WorkingDir, ...)."""
    return inspect(ref)["OCIv1"]["config"]


@contextmanager
def image_rootfs(ref: str) -> Iterator[Path]:
    """The image's filesystem, mounted on the host (a throwaway buildah working container)."""
    ctr = buildah("from", "--pull-never", ref)
    try:
        yield Path(buildah("mount", ctr))
    finally:
        buildah("umount", ctr)
        buildah("rm", ctr)


@dataclass
class Container:
    id: str
    state_dir: Path
    process: subprocess.Popen

    def runc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runc", "--root", str(self.state_dir), *args], capture_output=True, text=True)

    def signal(self, sig: str) -> None:
        self.runc("kill", self.id, sig)


def bundle_config(ref: str, rootfs: Path, args: list[str] | None, mounts: dict[str, Path], spec_dir: Path) -> dict:
    """runc's default spec, made into what a restricted pod with the image's config gets."""
    subprocess.run(["runc", "spec"], cwd=spec_dir, check=True)
    spec = json.loads((spec_dir / "config.json").read_text())
    image = image_config(ref)
    user = image.get("User", "")
    assert user == f"{UID}:{GID}", f"image user {user!r}: runAsNonRoot needs the numeric {UID}:{GID}"
    process = spec["process"]
    process.update(
        terminal=False,
        user={"uid": UID, "gid": GID},
        args=args if args is not None else image.get("Entrypoint", []) + image.get("Cmd", []),
        env=image.get("Env", []),
        cwd=image.get("WorkingDir") or "/",
        noNewPrivileges=True,
    )
    process["capabilities"] = {k: [] for k in ("bounding", "effective", "permitted", "ambient")}
    # What containerd passes on: its own open-file limits (root here may not raise them: no CAP_SYS_RESOURCE).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": soft}]
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["mounts"].append(
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
    )
    for dest, src in mounts.items():
        spec["mounts"].append({"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "rw"]})
    # The host's network: the test reaches a server in the container on 127.0.0.1.
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
    return spec


def writable_dirs(base: Path) -> dict[str, Path]:
    """Host directories for the pod's writable mounts, owned by the pod's user (what fsGroup does)."""
    mounts = {"/home/orpheus/.cache": base / "cache", "/engines": base / "engines"}
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, UID, GID)
    return mounts


@contextmanager
def started(ref: str, args: list[str] | None, work: Path, mounts: dict[str, Path] | None = None) -> Iterator[Container]:
    """A running container of REF (args replace the entrypoint + cmd; None runs the image's own), with stdout and
    stderr in work/output.log. Killed and deleted on exit."""
    mounts = writable_dirs(work) if mounts is None else mounts
    with image_rootfs(ref) as rootfs:
        bundle = work / f"bundle-{uuid.uuid4().hex[:8]}"
        bundle.mkdir()
        spec = bundle_config(ref, rootfs, args, mounts, bundle)
        (bundle / "config.json").write_text(json.dumps(spec))
        state_dir = work / "runc-state"
        state_dir.mkdir(exist_ok=True)
        cid = f"orpheus-test-{uuid.uuid4().hex[:8]}"
        log = (work / "output.log").open("ab")
        process = subprocess.Popen(
            ["runc", "--root", str(state_dir), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        container = Container(cid, state_dir, process)
        try:
            yield container
        finally:
            if process.poll() is None:
                container.signal("KILL")
                process.wait(timeout=30)
            container.runc("delete", "--force", cid)
            log.close()


def run(ref: str, args: list[str] | None, work: Path, timeout: float = 300) -> tuple[int, str]:
    """Runs a container to completion -> (exit status, its output)."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "output.log"
    log.unlink(missing_ok=True)
    with started(ref, args, work) as container:
        status = container.process.wait(timeout=timeout)
    return status, log.read_text(errors="replace")
