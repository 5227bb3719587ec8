"""The operations artefacts under deploy/: Prometheus's alert rules (checked, and each shown firing by
promtool's rule tests), its scrape config, and the Grafana dashboard, all on metrics /metrics serves."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import METRICS_TOKEN

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "taskmanager.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("CI must have promtool: `make promtool` installs Debian's prometheus package")
    pytest.skip("no promtool here: `make promtool` (as root on Debian) or your package manager installs it")


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_alert_rules_are_valid_and_each_fires_when_it_should() -> None:
    assert "SUCCESS: 6 rules found" in _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool("test", "rules", "alerts.test.yml")
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yml").read_text()))
    declared = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "alerts.yml").read_text()))
    assert tested == declared  # not one alert without a test that makes it fire


def test_the_scrape_config_is_valid(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    config = tmp_path / "prometheus.yml"
    token = tmp_path / "metrics-token"
    token.write_text(METRICS_TOKEN)
    config.write_text(config.read_text().replace("/prometheus/metrics-token", str(token)))
    _promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def _metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression reads: its identifiers, without label matchers, grouping labels,
    range selectors, functions and keywords."""
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = re.findall(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\b(?!\s*\()", expr)
    return {name for name in names if not re.fullmatch(r"[\d.e]+|and|or|unless|bool|offset", name)}


async def test_alerts_and_dashboard_read_metrics_the_api_serves(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
    served = {"up"}  # Prometheus's own, per scrape target
    for family in text_string_to_metric_families(text):
        served |= {family.name, *(sample.name for sample in family.samples)}
        suffixes = {"counter": ("total",), "histogram": ("bucket", "sum", "count")}.get(family.type, ())
        served |= {f"{family.name}_{suffix}" for suffix in suffixes}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [rule["expr"] for rule in rules] + [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    read = set().union(*(_metric_names(expr) for expr in exprs))
    assert {"workers_alive", "jobs_failed_total", "job_duration_seconds_bucket"} <= read  # the parser finds them
    assert read <= served, read - served


def test_the_dashboard_is_provisioned_from_the_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24  # Grafana's grid is 24 columns wide
        assert panel["targets"] and all(target["expr"] for target in panel["targets"])


def test_compose_runs_them_in_the_monitoring_profile() -> None:
    services = yaml.safe_load((DEPLOY.parent / "compose.yaml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]  # off unless asked for
        for mount in services[name]["volumes"]:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY.parent / source).exists(), source
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])  # this machine only
    assert "METRICS_TOKEN" in services["prometheus"]["environment"]
