"""Deployment artifacts (deploy/): the manifests name real routes, settings and metrics; promtool accepts
the Prometheus files; and a real Prometheus server scrapes a running gateway through the Kubernetes job."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from gateway.app import create_app
from gateway.config import SECRET_SETTINGS, SETTINGS, load_settings
from gateway.loadtest.client import TwilioCall
from gateway.metrics import GatewayMetrics
from tests.conftest import RunningGateway, scaled
from tests.integration.test_cli import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "gateway-dashboard.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = "promtool is not installed (Debian: apt-get install prometheus)"
NO_PROMETHEUS = "the prometheus server is not installed (Debian: apt-get install prometheus)"

# Files in deploy/k8s that `kubectl apply -k` must not apply: a placeholder Secret, and the Prometheus
# adapter's own configuration (it belongs to the adapter's installation).
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml", "prometheus-adapter-rules.yaml"}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client, not a gateway setting
# Series the alerts read from kube-state-metrics (readiness of pods that are not shutting down).
FOREIGN_METRICS = frozenset({"kube_pod_status_ready", "kube_pod_deletion_timestamp"})
METRIC_NAME = re.compile(r"\b(?:gateway|kube)_[a-z0-9_]+\b")
REQUIRED_ALERTS = {
    "GatewayInstanceDown",
    "GatewayPodNotReady",
    "GatewayCallFailureRatioHigh",
    "GatewayUpstreamConnectFailing",
    "GatewayUpstreamErrors",
    "GatewayResponseLatencyHigh",
    "GatewayAddedLatencyHigh",
    "GatewayNearCapacity",
    "GatewayRefusingCalls",
}
# What a Grafana variable stands for when a dashboard query is sent to Prometheus directly.
GRAFANA_VARIABLES = {"$job": ".*", "$__rate_interval": "1m", "$__range": "5m"}


def manifest(name: str) -> dict[str, Any]:
    """One Kubernetes manifest of deploy/k8s, parsed."""
    document = yaml.safe_load((K8S / name).read_text())
    assert isinstance(document, dict)
    return document


def pod_spec() -> dict[str, Any]:
    """The Deployment's pod template spec."""
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    """The Deployment's gateway container."""
    (container,) = pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def exported_names() -> dict[str, str]:
    """Every sample name a fresh GatewayMetrics exposes (histogram parts, counter `_total`), with its type."""
    text = generate_latest(GatewayMetrics(CollectorRegistry()).registry).decode()
    names: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if name.endswith("_created"):
            continue
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names.update({name + suffix: kind for suffix in suffixes})
    return names


def metric_names(expr: str) -> set[str]:
    """The gateway_* and kube_* metric names a PromQL expression reads."""
    return set(METRIC_NAME.findall(expr))


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> Iterator[str]:
    """Every PromQL query of the Grafana dashboard, rows' nested panels included."""
    board = json.loads(DASHBOARD.read_text())
    stack = list(board["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        yield from (target["expr"] for target in panel.get("targets", []))


def test_manifests_parse_and_kustomization_lists_them() -> None:
    """Every manifest in deploy/k8s parses as one named object, and kustomization.yaml lists all to apply."""
    files = sorted(p.name for p in K8S.glob("*.yaml"))
    assert "deployment.yaml" in files
    for name in files:
        document = manifest(name)
        assert document["apiVersion"]
        assert document["kind"]
        if name != "kustomization.yaml":
            assert document["metadata"]["name"]
    resources = manifest("kustomization.yaml")["resources"]
    assert sorted(resources) == sorted(set(files) - NOT_IN_KUSTOMIZATION)


def test_ports_and_probes_match_the_app() -> None:
    """The container port is the gateway's default port, and each probe path is a GET route of the app."""
    default_port = int(next(s.default for s in SETTINGS if s.env == "GATEWAY_PORT"))
    app = create_app(load_settings({}), registry=CollectorRegistry())
    get_routes = {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}
    container = gateway_container()
    (port,) = container["ports"]
    assert port["containerPort"] == default_port
    assert int(manifest("configmap.yaml")["data"]["GATEWAY_PORT"]) == default_port
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in get_routes
        assert probe["port"] == port["name"]
    annotations = manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == default_port
    assert annotations["prometheus.io/path"] in get_routes
    (service_port,) = manifest("service.yaml")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]


def test_env_names_are_declared_settings() -> None:
    """Every variable the ConfigMap, the Secret and the Deployment set is a gateway setting, secrets only in
    the Secret."""
    declared = {s.env for s in SETTINGS}
    config = manifest("configmap.yaml")["data"]
    secret = manifest("secret.example.yaml")["stringData"]
    container = gateway_container()
    env = {item["name"] for item in container["env"]}
    known = declared | {MULTIPROC_ENV}
    assert set(config) <= known, set(config) - known
    assert set(secret) <= known, set(secret) - known
    assert env <= known, env - known
    assert set(secret) <= SECRET_SETTINGS
    assert not set(config) & SECRET_SETTINGS
    sources = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert sources == {
        "configMapRef": manifest("configmap.yaml")["metadata"]["name"],
        "secretRef": manifest("secret.example.yaml")["metadata"]["name"],
    }


def test_configmap_and_secret_values_load() -> None:
    """The example ConfigMap and Secret together are a valid configuration for an Azure deployment."""
    environ = {**manifest("configmap.yaml")["data"], **manifest("secret.example.yaml")["stringData"]}
    settings = load_settings(environ)
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.azure_endpoint == environ["AZURE_OPENAI_ENDPOINT"]
    assert settings.twilio_auth_token is not None
    assert not settings.uses_emulator
    assert settings.workers * settings.max_calls == 400
    assert settings.drain_timeout_s == 3600


def test_grace_period_covers_prestop_and_drain() -> None:
    """The grace period outlasts the preStop wait plus the drain timeout, so a call is never killed."""
    spec = pod_spec()
    command = gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    drain_s = int(manifest("configmap.yaml")["data"]["GATEWAY_DRAIN_TIMEOUT_S"])
    assert 0 < pre_stop_s < 60
    assert spec["terminationGracePeriodSeconds"] > pre_stop_s + drain_s
    strategy = manifest("deployment.yaml")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_security_context_and_multiprocess_dir() -> None:
    """The container runs as non-root on a read-only root, with PROMETHEUS_MULTIPROC_DIR on an emptyDir."""
    spec = pod_spec()
    container = gateway_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    multiproc = next(item["value"] for item in container["env"] if item["name"] == MULTIPROC_ENV)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == multiproc)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_dockerfile_matches_the_deployment() -> None:
    """The image exposes the default port, runs as non-root, and runs the command the Deployment runs."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")  # join continued lines
    lines = [line.strip() for line in text.splitlines()]
    default_port = next(s.default for s in SETTINGS if s.env == "GATEWAY_PORT")
    assert f"EXPOSE {default_port}" in lines
    assert "STOPSIGNAL SIGTERM" in lines
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == gateway_container()["command"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in {"root", "0", "0:0"}
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "/healthz" in healthcheck


def test_selectors_and_hpa_metric() -> None:
    """Service, PDB and HPA point at the Deployment's pods, and the HPA scales on an exported gauge that
    the adapter rule serves under the same name."""
    deployment = manifest("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert manifest("service.yaml")["spec"]["selector"].items() <= labels.items()
    assert manifest("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = manifest("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert exported_names()[name] == "gauge"
    config = manifest("configmap.yaml")["data"]
    pod_capacity = int(config["GATEWAY_WORKERS"]) * int(config["GATEWAY_MAX_CALLS"])
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < pod_capacity
    (rule,) = yaml.safe_load(manifest("prometheus-adapter-rules.yaml")["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == name
    assert metric_names(rule["seriesQuery"]) == {name}


def test_alert_metrics_exist() -> None:
    """Every metric an alert reads is exported by GatewayMetrics (or kube-state-metrics), and the alerts
    cover failures, latency, saturation, down instances and readiness."""
    exported = set(exported_names()) | FOREIGN_METRICS
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used or rule["expr"].startswith("up{"), rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


def test_dashboard_metrics_exist_and_use_the_datasource_variable() -> None:
    """Every dashboard query reads exported metrics, through the `datasource` template variable."""
    board = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    exported = set(exported_names())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${" + variable["name"] + "}"
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names(expr)
    assert used <= exported, used - exported
    wanted = {
        "gateway_active_calls",
        "gateway_calls_total",
        "gateway_response_latency_seconds_bucket",
        "gateway_added_latency_seconds_bucket",
        "gateway_barge_ins_total",
        "gateway_barge_in_clear_seconds_bucket",
        "gateway_upstream_errors_total",
        "gateway_codec_seconds_bucket",
    }
    assert wanted <= used, wanted - used


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool with these arguments (bounded), capturing its output."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=scaled(60), check=False
    )


def kubernetes_job(sd_replacement: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The voice-gateway job of prometheus-kubernetes.yml; with `sd_replacement`, its kubernetes_sd swapped
    for these static_configs (Debian's Prometheus is built without Kubernetes discovery)."""
    config = yaml.safe_load((PROM / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    job = copy.deepcopy(job)
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    if sd_replacement is not None:
        del job["kubernetes_sd_configs"]
        job["static_configs"] = sd_replacement
    assert isinstance(job, dict)
    return job


def promtool_has_kubernetes_sd(tmp_path: Path) -> bool:
    """Whether this promtool build knows kubernetes_sd_configs."""
    probe = tmp_path / "probe.yml"
    config = {"scrape_configs": [{"job_name": "probe", "kubernetes_sd_configs": [{"role": "pod"}]}]}
    probe.write_text(yaml.safe_dump(config))
    return promtool("check", "config", probe).returncode == 0


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_config() -> None:
    """`promtool check config` accepts prometheus.yml and the alert rules it loads."""
    result = promtool("check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_kubernetes_relabeling(tmp_path: Path) -> None:
    """The Kubernetes job's relabel rules pass `promtool check config` (its discovery swapped for a static
    target, which every promtool build knows)."""
    config = {"scrape_configs": [kubernetes_job([{"targets": ["127.0.0.1:8080"]}])]}
    path = tmp_path / "kubernetes-relabeling.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_kubernetes_config(tmp_path: Path) -> None:
    """`promtool check config` accepts prometheus-kubernetes.yml where promtool has Kubernetes discovery."""
    if not promtool_has_kubernetes_sd(tmp_path):
        pytest.skip("this promtool is built without kubernetes_sd_configs (Debian's package removes it)")
    result = promtool("check", "config", PROM / "prometheus-kubernetes.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_rules() -> None:
    """`promtool check rules` accepts alerts.yml and counts every rule in it."""
    result = promtool("check", "rules", PROM / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_rule_unit_tests_pass() -> None:
    """The alert unit tests (alerts_test.yml: firing and quiet cases of five alerts) pass."""
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert len(tested) >= 3
    result = promtool("test", "rules", PROM / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


class PrometheusServer:
    """A `prometheus` process of our own on a loopback port, with its own storage; never the system's."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, http: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.port = port
        self.http = http

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        async with self.http.get(url, params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector."""
        data = await self.api("query", query=promql)
        assert data["resultType"] == "vector"
        result: list[dict[str, Any]] = data["result"]
        return result

    async def eventually(
        self, check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 20.0
    ) -> Any:
        """Await `check()` until it returns something truthy, within a scaled timeout."""
        deadline = asyncio.get_running_loop().time() + scaled(timeout_s)
        while True:
            value = await check()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline or self.proc.returncode is not None:
                raise AssertionError(f"prometheus: {what} not reached in time")
            await asyncio.sleep(0.2)


def prometheus_config(gateway_port: int) -> dict[str, Any]:
    """The Kubernetes job fed two fake pods on the gateway's address (one annotated for scraping, one
    not), scraped every second, with the alert rules loaded."""
    pod = {
        "__meta_kubernetes_namespace": "voice",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "voice-gateway",
        "__meta_kubernetes_pod_container_port_name": "http",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_pod_node_name": "node-1",
    }
    target = [f"127.0.0.1:{gateway_port}"]
    pods = [
        {
            "targets": target,
            "labels": {**pod, "__meta_kubernetes_pod_name": "voice-gateway-a", **scrape("true")},
        },
        {
            "targets": target,
            "labels": {**pod, "__meta_kubernetes_pod_name": "voice-gateway-b", **scrape("false")},
        },
    ]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(PROM / "alerts.yml")],
        "scrape_configs": [kubernetes_job(pods)],
    }


def scrape(value: str) -> dict[str, str]:
    """The prometheus.io/scrape annotation as a Kubernetes discovery label."""
    return {"__meta_kubernetes_pod_annotation_prometheus_io_scrape": value}


@pytest.fixture
async def prometheus(gateway: RunningGateway, tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    """A real Prometheus scraping the `gateway` fixture; stopped with SIGTERM, which must exit 0."""
    if PROMETHEUS is None:
        pytest.skip(NO_PROMETHEUS)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(gateway.port)))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=log,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(5))) as http:
            server = PrometheusServer(proc, port, http)
            await server.eventually(lambda: is_ready(http, port), "/-/ready", timeout_s=30)
            yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), scaled(20))
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, (tmp_path / "prometheus.log").read_text()[-2000:]


async def is_ready(http: aiohttp.ClientSession, port: int) -> bool:
    """Whether Prometheus answers 200 on /-/ready."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/-/ready") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_prometheus_scrapes_the_gateway(prometheus: PrometheusServer, gateway: RunningGateway) -> None:
    """Through the Kubernetes job's relabel rules, Prometheus keeps the annotated pod, labels it, reads
    `up` 1, the call limit, and gateway_active_calls 0 then 1 during a call, and evaluates every alert rule
    without error."""

    async def target_up() -> list[dict[str, Any]]:
        targets = await prometheus.api("targets")
        return [t for t in targets["activeTargets"] if t["health"] == "up"]

    (target,) = await prometheus.eventually(target_up, "the gateway target up")
    assert target["labels"]["pod"] == "voice-gateway-a"
    assert target["labels"]["namespace"] == "voice"
    assert target["labels"]["job"] == "voice-gateway"
    targets = await prometheus.api("targets")
    assert len(targets["activeTargets"]) == 1
    assert len(targets["droppedTargets"]) == 1  # the pod without prometheus.io/scrape=true

    (up,) = await prometheus.query('up{job="voice-gateway"}')
    assert up["metric"]["pod"] == "voice-gateway-a"
    assert up["value"][1] == "1"
    (active,) = await prometheus.query("gateway_active_calls")
    assert active["metric"]["namespace"] == "voice"
    assert active["value"][1] == "0"
    (limit,) = await prometheus.query("gateway_max_calls")
    assert float(limit["value"][1]) == gateway.state.settings.max_calls

    async with TwilioCall(gateway.media_url):

        async def one_call() -> bool:
            return [r["value"][1] for r in await prometheus.query("gateway_active_calls")] == ["1"]

        await prometheus.eventually(one_call, "gateway_active_calls == 1")

    async def rules_evaluated() -> list[dict[str, Any]]:
        groups = (await prometheus.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(not r["lastEvaluation"].startswith("0001") for r in rules) else []

    rules = await prometheus.eventually(rules_evaluated, "every alert rule evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []


async def test_dashboard_queries_run_in_prometheus(prometheus: PrometheusServer) -> None:
    """Every Grafana dashboard query, its variables filled in, is valid PromQL that Prometheus runs."""
    exprs = list(dashboard_exprs())
    assert len(exprs) >= 10
    for expr in exprs:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr
        await prometheus.query(expr)
