"""The chart without a cluster: helm lint, what `helm template` renders, and values.schema.json."""

from __future__ import annotations

import json

import pytest
import yaml

from chart.support import CHART, CPU_VALUES, GPU_VALUES, KUBE_VERSION, container_env, deep_merge, find


@pytest.mark.parametrize("values", [None, CPU_VALUES, GPU_VALUES], ids=["defaults", "cpu", "gpu"])
def test_lint(helm, values):
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    out = helm(*args, *(["-f", str(values)] if values else [])).stdout
    assert "0 chart(s) failed" in out


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"


def test_defaults_render_one_operator_with_least_surprise(render):
    objects = render()
    dep = find(objects, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # kopf standalone: never two operators at once
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == find(objects, "ServiceAccount")["metadata"]["name"] == "t-orpheus-tts-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["orpheus-operator"]
    assert container["image"] == "ghcr.io/orpheus-tts/orpheus-tts-operator:0.1.0"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = container_env(dep)
    assert env == {
        "ORPHEUS_OPERATOR_RUNTIME_IMAGE": "ghcr.io/orpheus-tts/orpheus-tts:0.1.0",
        "ORPHEUS_OPERATOR_LOG_LEVEL": "INFO",
        "ORPHEUS_OPERATOR_HEALTH_PORT": "8080",
        "ORPHEUS_OPERATOR_CRD_FILE": "/etc/orpheus-operator/crd/orpheustts.yaml",
    }  # no namespaces (all), no build image (the runtime image builds)
    service = find(objects, "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "health"
    assert not [o for o in objects if o["kind"] == "OrpheusTTS"]


def test_values_reach_the_operator_environment(render):
    dep = find(
        render(
            "--set",
            "runtime.default=torch,runtime.images.torch.tag=dev,logLevel=DEBUG,healthPort=9090",
            "--set",
            "build.image.repository=registry.local/builder,watchNamespaces={a,b}",
            "--set",
            "image.tag=1.2.3",
        ),
        "Deployment",
    )
    env = container_env(dep)
    assert env["ORPHEUS_OPERATOR_RUNTIME_IMAGE"] == "ghcr.io/orpheus-tts/orpheus-tts-torch:dev"
    assert env["ORPHEUS_OPERATOR_BUILD_IMAGE"] == "registry.local/builder:0.1.0"
    assert env["ORPHEUS_OPERATOR_NAMESPACES"] == "a,b"
    assert env["ORPHEUS_OPERATOR_LOG_LEVEL"] == "DEBUG"
    assert env["ORPHEUS_OPERATOR_HEALTH_PORT"] == "9090"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/orpheus-tts/orpheus-tts-operator:1.2.3"
    assert container["ports"][0]["containerPort"] == 9090


def test_instances_become_orpheustts_objects(render):
    objects = render("-f", str(CPU_VALUES), "--set", "instances[1].name=second,instances[1].namespace=other")
    first, second = (find(objects, "OrpheusTTS", n) for n in ("orpheus", "second"))
    assert first["apiVersion"] == "tts.orpheus.dev/v1alpha1"
    assert first["metadata"]["namespace"] == "tts"
    assert first["spec"] == yaml.safe_load(CPU_VALUES.read_text())["instances"][0]["spec"]
    assert second["metadata"]["namespace"] == "other"
    assert second["spec"] == {}  # the CRD's defaults apply on the server


def test_helm_test_hook_checks_the_health_service(render):
    objects = render()
    pod = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = " ".join(pod["spec"]["containers"][0]["command"])
    service = find(objects, "Service")["metadata"]["name"]
    assert f"http://{service}:8080/healthz" in script


def test_values_schema_is_valid_json_schema():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for values in (CHART / "values.yaml", CPU_VALUES, GPU_VALUES):
        merged = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), yaml.safe_load(values.read_text()))
        jsonschema.validate(merged, schema)


# (helm --set arguments, words the error message must contain)
BAD_VALUES = [
    ("logLevel=LOUD", ["logLevel", "DEBUG", "INFO"]),
    ("healthPort=80", ["healthPort", "minimum", "got 80"]),
    ("runtime.default=vllm", ["runtime", "default", "trtllm", "torch"]),
    ("instances[0].name=Bad_Name", ["instances", "name", "does not match"]),
    ("instances[0].name=" + "x" * 41, ["instances", "name", "40"]),
    ("instances[0].spec=oops", ["instances", "spec", "object"]),
    ("podSecurityContext.runAsNonRoot=false", ["runAsNonRoot", "true"]),
    ("watchNamespaces={Not-A-Namespace}", ["watchNamespaces", "does not match"]),
    ("replicas=2", ["replicas", "additional"]),
    ("image.repository=", ["image", "repository"]),
    # Runtime pods take their pull policy from the OrpheusTTS (spec.runtime.imagePullPolicy), not from here.
    ("runtime.images.torch.pullPolicy=Always", ["runtime/images/torch", "pullPolicy", "not allowed"]),
]


@pytest.mark.parametrize(("setting", "words"), BAD_VALUES, ids=[s.split("=")[0] for s, _ in BAD_VALUES])
def test_schema_rejects_bad_values_readably(helm, setting, words):
    proc = helm("template", "t", str(CHART), "--kube-version", KUBE_VERSION, "--set", setting, check=False)
    assert proc.returncode != 0
    message = proc.stderr
    assert "values don't meet the specifications of the schema" in message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
