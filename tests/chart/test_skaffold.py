"""skaffold.yaml, read as data (tests/container_images/test_skaffold.py runs the real skaffold): it names only
existing Dockerfiles, contexts, charts and values files, its templates only reference images it builds, and each
profile deploys what it claims."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from chart.support import CHART, KUBE_VERSION, ROOT, container_env, deep_merge, find

SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
PROFILES = [None] + [p["name"] for p in SKAFFOLD.get("profiles", [])]


def apply_profile(config: dict, name: str | None) -> dict:
    """What skaffold does with `-p name`: JSON patches, then the profile's sections replace the base ones."""
    config = copy.deepcopy(config)
    if name is None:
        return config
    (profile,) = [p for p in config.pop("profiles") if p["name"] == name]
    for patch in profile.get("patches", []):
        *parents, last = [int(k) if k.isdigit() else k for k in patch["path"].strip("/").split("/")]
        target = config
        for key in parents:
            target = target[key]
        if patch["op"] == "remove":
            del target[last]
        elif patch["op"] in ("replace", "add"):
            target[last] = patch["value"]
        else:
            raise AssertionError(f"unsupported patch op {patch['op']}")
    for section in ("build", "deploy", "portForward", "manifests"):
        if section in profile:
            config[section] = profile[section]
    return config


def template_var(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def release(config: dict) -> dict:
    (rel,) = config["deploy"]["helm"]["releases"]
    return rel


def merged_values(config: dict) -> dict:
    """The chart's values.yaml overlaid with the release's values files (helm's deep merge)."""

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in release(config).get("valuesFiles", []):
        values = deep_merge(values, yaml.safe_load((ROOT / f).read_text()))
    return values


def test_schema_version_and_kind():
    assert SKAFFOLD["apiVersion"] == "skaffold/v4beta13"
    assert SKAFFOLD["kind"] == "Config"
    assert PROFILES == [None, "cpu"]


def dockerfile_of(artifact: dict) -> str:
    """The Dockerfile an artifact builds: docker's own field, or for the custom builder (images/build.sh) the one
    Dockerfile among its dependencies."""
    if "docker" in artifact:
        return artifact["docker"]["dockerfile"]
    (dockerfile,) = [p for p in artifact["custom"]["dependencies"]["paths"] if p.endswith(".Dockerfile")]
    return dockerfile


@pytest.mark.parametrize("profile", PROFILES)
def test_artifacts_name_existing_dockerfiles_and_contexts(profile):
    config = apply_profile(SKAFFOLD, profile)
    artifacts = config["build"]["artifacts"]
    assert len({a["image"] for a in artifacts}) == len(artifacts)
    for artifact in artifacts:
        context = ROOT / artifact.get("context", ".")
        assert context.is_dir()
        assert (context / dockerfile_of(artifact)).is_file()
        if "custom" in artifact:
            script, *args = artifact["custom"]["buildCommand"].split()
            assert (context / script).is_file() and args[0] == "--skaffold"
            # The builder builds the image the artifact names, from the Dockerfile skaffold watches.
            assert artifact["image"] == f"localhost/orpheus-tts-{args[1]}"
            assert (
                f"build_image {args[1]} {dockerfile_of(artifact)} {artifact['image']} "
                in (context / script).read_text()
            )
            for dep in artifact["custom"]["dependencies"]["paths"]:
                assert (context / dep).exists(), dep
        for rule in artifact.get("sync", {}).get("manual", []):
            # Synced files land in the editable install the Dockerfile creates at dest.
            assert list(ROOT.glob(rule["src"])), rule["src"]
            dockerfile = (context / dockerfile_of(artifact)).read_text()
            top = rule["src"].split("/")[0]
            assert f"{top} {rule['dest']}/{top}" in dockerfile
            assert f"pip.sh install --no-deps -e {rule['dest']}" in dockerfile


@pytest.mark.parametrize("profile", PROFILES)
def test_release_names_an_existing_chart_and_values_files(profile):
    rel = release(apply_profile(SKAFFOLD, profile))
    assert (ROOT / rel["chartPath"]).resolve() == CHART
    assert rel["valuesFiles"]
    for f in rel["valuesFiles"]:
        assert (ROOT / f).is_file()


@pytest.mark.parametrize("profile", PROFILES)
def test_value_templates_reference_built_images_and_real_values(profile):
    config = apply_profile(SKAFFOLD, profile)
    built = {template_var(a["image"]) for a in config["build"]["artifacts"]}
    values = merged_values(config)
    used = set()
    for key, template in release(config)["setValueTemplates"].items():
        node = values
        for part in key.split("."):
            assert part in node, f"{key} is not a chart value"
            node = node[part]
        for var in re.findall(r"\.IMAGE_(?:REPO|TAG)_(\w+)}}", template):
            assert var in built, f"{key} uses image {var}, which this profile does not build"
            used.add(var)
    assert used == built  # and every image the profile builds reaches the chart


def test_default_profile_is_the_gpu_endpoint():
    values = merged_values(SKAFFOLD)
    assert values["runtime"]["default"] == "trtllm"
    assert {a["image"] for a in SKAFFOLD["build"]["artifacts"]} == {
        "orpheus-tts-operator",
        "orpheus-tts",
        "orpheus-tts-torch",
    }
    (instance,) = values["instances"]
    assert instance["spec"]["model"]["hfTokenSecretRef"] == {"name": "hf-token"}
    assert "engine" not in instance["spec"]  # the CRD's defaults: trtllm, int4_awq, int8 KV cache, 1 GPU


def test_cpu_profile_builds_no_trtllm_image_and_requests_no_gpu():
    config = apply_profile(SKAFFOLD, "cpu")
    assert {a["image"] for a in config["build"]["artifacts"]} == {
        "localhost/orpheus-tts-operator",
        "localhost/orpheus-tts-torch",
    }
    assert config["build"]["local"]["push"] is False  # no registry: the builder loads images into containerd
    values = merged_values(config)
    assert values["runtime"]["default"] == "torch"
    (instance,) = values["instances"]
    spec = instance["spec"]
    assert spec["model"]["repo"] == "tiny-random"
    assert spec["engine"]["backend"] == "torch"
    assert spec["runtime"]["gpus"] == 0 and spec["build"]["gpus"] == 0
    assert spec["runtime"]["affinity"] == {} and spec["runtime"]["tolerations"] == []  # schedulable anywhere
    # File sync writes into /app of the server pods: their root filesystem is writable in this profile, and only that.
    assert spec["runtime"]["securityContext"] == {"readOnlyRootFilesystem": False}
    assert "securityContext" not in spec["build"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(spec)


@pytest.mark.parametrize("profile", PROFILES)
def test_port_forward_targets_the_deployed_instance(profile):
    config = apply_profile(SKAFFOLD, profile)
    (forward,) = config["portForward"]
    (instance,) = merged_values(config)["instances"]
    assert forward["resourceType"] == "service"
    assert forward["resourceName"] == instance["name"]  # the operator names the Service after the resource
    assert forward["namespace"] == release(config)["namespace"]
    assert forward["port"] == 8000


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_renders_with_built_tags(helm, profile):
    """helm template with the values skaffold would pass (templates filled in with fake built tags)."""
    config = apply_profile(SKAFFOLD, profile)
    rel = release(config)
    args = ["template", rel["name"], str(CHART), "--namespace", rel["namespace"], "--kube-version", KUBE_VERSION]
    for f in rel["valuesFiles"]:
        args += ["-f", str(ROOT / f)]
    for key, template in rel["setValueTemplates"].items():
        value = re.sub(r"{{\.IMAGE_REPO_(\w+)}}", r"registry.local/\1", template)
        value = re.sub(r"{{\.IMAGE_TAG_(\w+)}}", "built", value)
        args += ["--set-string", f"{key}={value}"]
    objects = [o for o in yaml.safe_load_all(helm(*args).stdout) if o]
    dep = find(objects, "Deployment")
    prefix = "" if profile is None else "localhost_"
    operator = f"registry.local/{prefix}orpheus_tts_operator:built"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == operator
    runtime = "orpheus_tts" if profile is None else "localhost_orpheus_tts_torch"
    assert container_env(dep)["ORPHEUS_OPERATOR_RUNTIME_IMAGE"] == f"registry.local/{runtime}:built"
    assert find(objects, "OrpheusTTS")["metadata"]["name"] == config["portForward"][0]["resourceName"]
