"""The monitoring stack as shipped in deploy/: Prometheus rules and configs pass `promtool`,
Alertmanager's config passes `amtool`, every metric an alert reads exists in a live scrape of
a real gateway, and the compose stack has a healthcheck on every service and one source
for the database password."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from support.gateway import REPO

DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "schoolgate-alerts.yml"
# Series Prometheus makes itself, not the gateway.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _yaml(path: Path):
    return YAML(typ="safe").load(path.read_text())


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {package}; ./dev test installs it as root)")
    return path


def _run(*command: str, cwd: Path | None = None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_alert_rules_pass_promtool() -> None:
    out = _run(_tool("promtool", "prometheus"), "check", "rules", str(ALERTS))
    assert "SUCCESS" in out


@pytest.mark.parametrize("config", ["prometheus/prometheus.yml", "compose/prometheus.yml"])
def test_prometheus_configs_pass_promtool(config: str, tmp_path: Path) -> None:
    promtool = _tool("promtool", "prometheus")
    # laid out as installed: the rules file beside the config
    shutil.copy(DEPLOY / config, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "schoolgate-alerts.yml")
    _run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    scrape = _yaml(tmp_path / "prometheus.yml")
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    # targets come from the file `schoolgate run` writes for its workers, never a fixed list
    assert jobs["schoolgate"]["file_sd_configs"][0]["files"] == ["/run/schoolgate/prometheus-targets.json"]
    assert scrape["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_alertmanager_config_passes_amtool() -> None:
    out = _run(_tool("amtool", "prometheus-alertmanager"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert "SUCCESS" in out
    config = _yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    assert any('severity="critical"' in m for r in config["route"]["routes"] for m in r["matchers"])


def _alert_metrics() -> dict[str, set[str]]:
    """Each alert and the series names its expression reads."""
    rules = [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]
    names = {}
    for rule in rules:
        series = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\)|\s*[<>=!]|$)", rule["expr"]))
        names[rule["alert"]] = {s for s in series if s.startswith("schoolgate_") or s in PROMETHEUS_OWN}
    return names


def test_every_alert_reads_a_metric_a_live_gateway_exposes(gateway_factory) -> None:
    gw = gateway_factory('[gateway]\ndefault_group = "pupils"\n\n[groups.pupils]\nnetworks = ["127.0.0.1/32"]\n')
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    scrape = opener.open(gw.metrics_url, timeout=10).read().decode()
    exposed = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            exposed.add(name)
            if kind == "histogram":
                exposed |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            exposed.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    alerts = _alert_metrics()
    assert len(alerts) >= 10
    for alert, series in alerts.items():
        assert series, f"{alert} reads no series we could recognise"
        missing = {s for s in series if s not in PROMETHEUS_OWN} - exposed
        assert not missing, f"alert {alert} reads {missing}, which a running gateway does not expose"


def test_compose_has_a_healthcheck_on_every_service_and_one_password_source() -> None:
    compose = _yaml(DEPLOY / "compose.yaml")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name, service in compose["services"].items():
        uses_image_check = service.get("image") == "schoolgate:local" and "HEALTHCHECK" in dockerfile
        assert "healthcheck" in service or uses_image_check, f"compose service {name} has no healthcheck"
    assert {"gateway", "console", "lists", "postgres", "prometheus", "alertmanager", "grafana"} <= set(compose["services"])
    # the password: one Docker secret, read by PostgreSQL and the schoolgate services; in no file we ship
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name in ("gateway", "console", "lists"):
        assert "postgres_password" in compose["services"][name]["secrets"]
    policy = (DEPLOY / "compose" / "policy.toml").read_text()
    assert re.search(r"postgresql\+asyncpg://schoolgate@", policy), "the compose policy must carry no password"
    assert "PGPASSWORD" in (DEPLOY / "docker-entrypoint.sh").read_text()
    # the gateway's workers are what Prometheus scrapes: they share the targets file with it
    gateway = compose["services"]["gateway"]
    assert "--workers" in gateway["command"] and gateway["environment"]["RUNTIME_DIRECTORY"] == "/run/schoolgate"
    assert "gateway-run:/run/schoolgate:ro" in compose["services"]["prometheus"]["volumes"]
