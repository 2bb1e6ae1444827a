"""The chart's monitoring objects (issue #12): rendered only when asked and when their CRDs exist; every metric a
rule or dashboard panel queries is one a running `orpheus-tts serve` or the operator really exports; Prometheus'
own rule-file parser accepts the rules (tests/k8s/rulecheck); the prometheus-adapter rule
(docs/prometheus-adapter-values.yaml) names a real metric; the operator's HA settings (replicas, peering objects,
RBAC)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chart.support import ROOT, find

# What `helm install` sees on a cluster with the Prometheus Operator's CRDs (Capabilities.APIVersions).
MONITORING_APIS = [
    f"--api-versions=monitoring.coreos.com/v1/{kind}" for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
]
ALL_ON = [
    "--set",
    "monitoring.serviceMonitor.enabled=true,monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true",
]
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
# PromQL words that look like metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "clamp_min", "by", "and", "or", "unless", "max_over_time",
    "without", "on", "ignoring", "group_left", "label_values", "le",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exported_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can have: a family with no samples yet (a labelled counter
    nobody incremented) still declares its name and type."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers outside {...} label matchers and strings)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][-+]?\d+)?", "0", expr)  # numbers such as 1e-9
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("orpheus:") and not w.startswith("__")}


DASHBOARD = "t-orpheus-tts-operator-dashboard"  # beside it: the CRD's ConfigMap (crds.upgrade)


def rendered_monitoring(render) -> tuple[dict, dict, dict, dict]:
    objects = render(*ALL_ON, *MONITORING_APIS)
    return (
        find(objects, "PrometheusRule"),
        find(objects, "ConfigMap", DASHBOARD),
        find(objects, "ServiceMonitor"),
        find(objects, "PodMonitor"),
    )


def queried_names(rule: dict, dashboard: dict) -> dict[str, set[str]]:
    """metric name -> where it is used."""
    used: dict[str, set[str]] = {}
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            for name in metric_names(r["expr"]):
                used.setdefault(name, set()).add(r.get("alert") or r.get("record"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(panel["title"])
    return used


def test_monitoring_is_off_by_default_and_needs_its_crds(render) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in render()}
    assert ("ConfigMap", DASHBOARD) not in names
    assert not {kind for kind, _ in names} & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    # Asked for, but the Prometheus Operator's CRDs are not there: only the dashboard (a ConfigMap) renders.
    names = {(o["kind"], o["metadata"]["name"]) for o in render(*ALL_ON)}
    assert ("ConfigMap", DASHBOARD) in names
    assert not {kind for kind, _ in names} & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_monitors_select_the_operator_and_the_runtime_pods(render) -> None:
    _, dashboard_cm, service_monitor, pod_monitor = rendered_monitoring(render)
    assert service_monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}
    ]
    assert (
        service_monitor["spec"]["selector"]["matchLabels"]
        == find(render(), "Deployment")["spec"]["selector"]["matchLabels"]
    )
    from orpheus_operator import crd

    # The runtime pods carry crd.labels(name, SERVER) (render.render_deployment).
    runtime_labels = crd.labels("any", crd.SERVER)
    for key, value in pod_monitor["spec"]["selector"]["matchLabels"].items():
        assert runtime_labels[key] == value
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard_cm["data"]["orpheus-tts.json"])


@pytest.fixture(scope="module")
def runtime_exposition(tmp_path_factory) -> str:
    """/metrics of a real `orpheus-tts serve` (tiny random-weight model, CPU) after one utterance."""
    from orpheus_tts.model.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    port = free_port()
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs", "--no-torch-compile",
           "--max-input-len", "24", "--max-output-len", "28", "--max-batch-size", "2"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not ready: " + log_path.read_text()
            time.sleep(0.3)
        asyncio.run(_speak(base))
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            return r.read().decode()
    finally:
        proc.kill()
        proc.wait()


async def _speak(base: str) -> None:
    import websockets

    async with websockets.connect(base.replace("http", "ws") + "/ws/tts") as ws:
        await ws.send(json.dumps({"text": "Hello there."}))
        while (await ws.recv()) != b"__END__":
            pass


@pytest.fixture(scope="module")
def operator_exposition() -> str:
    """/metrics of the operator's exposition server (what main.py starts), after one recorded status."""
    from orpheus_operator import metrics

    metrics.record_status("tts", "voice", {"phase": "Ready", "replicas": 2, "readyReplicas": 2})
    port = free_port()
    metrics.serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_every_queried_metric_is_exported(render, runtime_exposition, operator_exposition) -> None:
    rule, dashboard_cm, _, _ = rendered_monitoring(render)
    dashboard = json.loads(dashboard_cm["data"]["orpheus-tts.json"])
    used = queried_names(rule, dashboard)
    exported = exported_names(runtime_exposition) | exported_names(operator_exposition)
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"queried but not exported: {missing}"
    # The parse is real: the queries name the metrics the issue asks for.
    for name in (
        "orpheus_active_streams",
        "orpheus_first_audio_seconds_bucket",
        "orpheus_real_time_factor_bucket",
        "orpheus_generated_tokens_total",
        "orpheus_snac_batch_size_bucket",
        "orpheus_engine_decode_gpu_seconds_total",
        "orpheus_rejected_streams_total",
        "orpheus_operator_phase",
    ):
        assert name in used, name
    # The SLO threshold is one of the runtime's bucket bounds (else the bucket selector matches nothing).
    buckets = {s.labels["le"] for f in text_string_to_metric_families(runtime_exposition) for s in f.samples
               if s.name == "orpheus_first_audio_seconds_bucket"}  # fmt: skip
    assert str(float(yaml.safe_load((ROOT / "charts/orpheus-tts-operator/values.yaml").read_text())["monitoring"][
        "prometheusRule"]["firstAudioSeconds"])) in buckets  # fmt: skip


def test_dashboard_shows_what_the_issue_lists(render) -> None:
    _, dashboard_cm, _, _ = rendered_monitoring(render)
    titles = " | ".join(p["title"].lower() for p in json.loads(dashboard_cm["data"]["orpheus-tts.json"])["panels"])
    for topic in ("streams", "first-audio latency", "real-time factor", "tokens per second", "snac batch",
                  "gpu step", "refused", "build"):  # fmt: skip
        assert topic in titles, topic


def test_prometheus_adapter_rule_names_an_exported_metric(runtime_exposition) -> None:
    values = yaml.safe_load((ROOT / "docs" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    (series,) = metric_names(rule["seriesQuery"])
    assert series in exported_names(runtime_exposition)
    assert rule["name"]["as"] == "orpheus_active_streams"  # the HPA's Pods metric (operator crd.py)
    from orpheus_operator import crd

    assert rule["name"]["as"] == crd.ACTIVE_STREAMS_METRIC


def test_prometheus_parses_the_rules(render, tmp_path: Path) -> None:
    """Prometheus' rule-file parser (model/rulefmt, what `promtool check rules` runs): the YAML, each PromQL
    expression, the `for` durations and the annotation templates."""
    proc = subprocess.run(["bash", str(ROOT / "tests/k8s/build-rulecheck.sh")], stdout=subprocess.PIPE, text=True)
    assert proc.returncode == 0, "tests/k8s/build-rulecheck.sh failed (see stderr)"
    rulecheck = Path(proc.stdout.strip().splitlines()[-1]) / "rulecheck"
    rule, *_ = rendered_monitoring(render)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run([str(rulecheck), str(rules_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    count = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules" in out.stdout
    # The parser really checks: a broken expression and a broken annotation template are each refused.
    for path, broken in (
        (("expr",), "sum(rate(orpheus_rejected_streams_total[5m]"),
        (("annotations", "summary"), "{{ $value | humanize "),
    ):
        bad = copy.deepcopy(rule)
        target = bad["spec"]["groups"][1]["rules"][0]
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = broken
        rules_file.write_text(yaml.safe_dump(bad["spec"]))
        refused = subprocess.run([str(rulecheck), str(rules_file)], capture_output=True, text=True)
        assert refused.returncode == 1, (path, refused.stdout)
        assert "SUCCESS" not in refused.stdout and refused.stderr.strip(), path


def test_two_operator_replicas_use_kopf_peering(render) -> None:
    objects = render("--set", "replicas=2")
    dep = find(objects, "Deployment")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ORPHEUS_OPERATOR_PEERING"] == "t-orpheus-tts-operator"
    peering = find(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == env["ORPHEUS_OPERATOR_PEERING"]
    role = find(objects, "ClusterRole", "t-orpheus-tts-operator")  # beside it: the CRD upgrade role
    peering_rule = {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    }
    assert peering_rule in role["rules"]
    namespaced = render("--set", "replicas=2,watchNamespaces={a,b}")
    assert sorted(o["metadata"]["namespace"] for o in namespaced if o["kind"] == "KopfPeering") == ["a", "b"]
    single = render()
    assert not [o for o in single if "KopfPeering" in o["kind"]]
    assert "ORPHEUS_OPERATOR_PEERING" not in {
        e["name"] for e in find(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
