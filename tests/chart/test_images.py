"""Static checks of images/*.Dockerfile: what they copy exists and survives .dockerignore, their entry points are
console scripts, bases are pinned, they run as non-root, and the TensorRT-LLM image repeats the PyTorch image's steps.
tests/container_images builds and runs the operator and PyTorch images for real."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from chart.support import ROOT

DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes. A directory pattern covers its contents."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(rel, pattern):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def copy_sources(path: Path) -> list[str]:
    sources = []
    for word, args in instructions(path):
        if word == "COPY":
            parts = [a for a in args.split() if not a.startswith("--")]
            sources += parts[:-1]
    return sources


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} >= {
        "runtime-trtllm.Dockerfile",
        "runtime-torch.Dockerfile",
        "operator.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    patterns = dockerignore_patterns()
    sources = copy_sources(dockerfile)
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist"
        assert not dockerignored(src, patterns), f"{dockerfile.name}: COPY source {src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small():
    patterns = dockerignore_patterns()
    for rel in (".git", ".venv", "tests/k8s/build.sh", "benchmarks", "runtime/orpheus_tts/__pycache__"):
        assert dockerignored(rel, patterns), rel
    assert not dockerignored("runtime/orpheus_tts/serve/server.py", patterns)


def base_images(dockerfile: Path) -> list[str]:
    """The FROM images, with `${ARG}` replaced by the ARG's default (what a build without --build-arg uses)."""
    steps = instructions(dockerfile)
    defaults = dict(args.split("=", 1) for word, args in steps if word == "ARG" and "=" in args)
    return [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], args.split()[0]) for word, args in steps if word == "FROM"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned(dockerfile):
    bases = base_images(dockerfile)
    assert bases
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and "/" not in tag, f"{base}: no tag"
        assert re.search(r"\d+\.\d+", tag) and tag != "latest", f"{base}: tag is not a version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root(dockerfile):
    users = [args for word, args in instructions(dockerfile) if word == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_a_console_script(dockerfile):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = [args for word, args in instructions(dockerfile) if word == "ENTRYPOINT"]
    program = json.loads(entry)[0]  # exec form: a JSON list
    assert program in scripts


def test_runtime_images_serve_by_default_and_can_build():
    for name in ("runtime-trtllm.Dockerfile", "runtime-torch.Dockerfile"):
        steps = dict(instructions(ROOT / "images" / name))
        assert steps["ENTRYPOINT"] == '["orpheus-tts"]'
        # CMD, not part of the ENTRYPOINT: the build Job runs the same image with `build-engine ...` as args.
        assert steps["CMD"] == '["serve"]'
        assert "8000" in steps["EXPOSE"]


def test_trtllm_image():
    steps = instructions(ROOT / "images" / "runtime-trtllm.Dockerfile")
    assert ("FROM", "nvcr.io/nvidia/tensorrt-llm/release:1.2.1") in steps
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "TLLM_WORKER_USE_SINGLE_PROCESS=1" in env
    runs = " ".join(args for word, args in steps if word == "RUN")
    # The image's own torch stays: requirements go through the filter, never straight to pip.
    assert "missing_requirements.py /opt/orpheus-build/runtime.txt" in runs
    assert "install -r /opt/orpheus-build/runtime.txt" not in runs


def test_trtllm_image_repeats_the_torch_image_steps():
    """The layers we test are the layers we ship: below its FROM and its one ENV, the TensorRT-LLM image is built by
    the very steps of the PyTorch image (same instructions, same scripts), which tests/container_images builds and
    runs on CPU. Only the base differs: the published PyTorch image's base is a build argument."""
    torch = instructions(ROOT / "images" / "runtime-torch.Dockerfile")
    trtllm = instructions(ROOT / "images" / "runtime-trtllm.Dockerfile")
    assert torch[:2] == [("ARG", "BASE=python:3.12.12-slim-bookworm"), ("FROM", "${BASE}")]
    assert trtllm[0] == ("FROM", "nvcr.io/nvidia/tensorrt-llm/release:1.2.1")
    word, args = trtllm[1]  # the one ENV of its own: TensorRT-LLM's settings
    assert word == "ENV" and {a.split("=")[0] for a in args.split()} == {
        "TLLM_WORKER_USE_SINGLE_PROCESS",
        "LD_LIBRARY_PATH",
    }
    assert trtllm[2:] == torch[2:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pip_runs_through_the_build_script_with_the_ca_as_a_secret(dockerfile):
    """images/pip.sh reads the CA bundle from a secret mount, which never lands in a layer (see images/build.sh)."""
    for word, args in instructions(dockerfile):
        if word == "RUN" and "pip" in args:
            assert "--mount=type=secret,id=pip-ca" in args
            assert "python3 -m pip" not in args and "sh /opt/orpheus-build/pip.sh install" in args


def test_operator_image_installs_no_runtime_dependencies():
    copies = copy_sources(ROOT / "images" / "operator.Dockerfile")
    assert "requirements/operator.txt" in copies
    assert "runtime" not in copies  # the runtime's package stays out too
    assert not [c for c in copies if c.startswith("requirements/") and c != "requirements/operator.txt"]
    pinned = [ln.split("==")[0].lower() for ln in (ROOT / "requirements" / "operator.txt").read_text().splitlines()]
    assert "torch" not in pinned


def test_missing_requirements_filter(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text(
        "# pinned\npyyaml==0.0.1  # installed (any version): the image's copy wins\n"
        "\nPyYAML==1\nsurely-not-installed-orpheus-pkg==1.2.3\n"
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "images" / "missing_requirements.py"), str(req)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == ["surely-not-installed-orpheus-pkg==1.2.3"]
