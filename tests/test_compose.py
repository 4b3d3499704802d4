"""docker-compose.yml, the Prometheus scrape config and the Grafana provisioning agree with ctloop's
settings and metrics (no Docker engine needed: the files are parsed and cross-checked). Where Debian's
``docker-compose`` and ``promtool`` (package prometheus) are installed (.ci/run installs them), the files
are also validated by them; each of those tests skips cleanly when its tool is absent."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml (pip install pyyaml)")

from infra.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CTLOOP_SERVICES = {"processors": "process", "trainer": "train", "sink": "sink", "app": "app", "demo": "demo"}
GPU_OVERRIDE = ROOT / "docker-compose.gpu.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_every_service_of_the_production_stack_is_there(compose):
    services = compose["services"]
    assert {"kafka", "schema-registry", "clickhouse", "prometheus", "grafana", *CTLOOP_SERVICES} <= set(services)
    kafka = _env(services["kafka"])
    assert "apache/kafka" in services["kafka"]["image"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "Kafka must run in KRaft mode"
    assert "zookeeper" not in json.dumps(compose).lower()
    assert "schema-registry" in services["schema-registry"]["image"]
    assert "clickhouse-server" in services["clickhouse"]["image"]
    for name, command in CTLOOP_SERVICES.items():
        assert services[name]["command"][0] == command, name
        assert services[name].get("build"), f"{name} is built from the ctloop Dockerfile"
    assert (ROOT / "Dockerfile").exists()
    assert 'ENTRYPOINT ["ctloop"]' in (ROOT / "Dockerfile").read_text()


def test_the_gpu_reservation_is_in_the_override_file_only(compose):
    """`up` works on hosts without a GPU: no device reservation in the base file; the override reserves
    one for the trainer and runs it on cuda."""
    assert "nvidia" not in (ROOT / "docker-compose.yml").read_text().split("services:", 1)[1]
    trainer = compose["services"]["trainer"]
    assert "deploy" not in trainer and not _env(trainer)["CTLOOP_TRAINER_DEVICE"].startswith("cuda")
    gpu = yaml.safe_load(GPU_OVERRIDE.read_text())["services"]["trainer"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices)
    assert _env(gpu)["CTLOOP_TRAINER_DEVICE"].startswith("cuda")
    assert "TORCH_INDEX" in gpu["build"]["args"]


def test_every_named_volume_is_declared_and_every_writer_has_data(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = str(mount).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
    for name in CTLOOP_SERVICES:
        targets = {str(m).split(":")[1] for m in compose["services"][name].get("volumes", [])}
        assert {"/data", "/artifacts"} <= targets, f"{name} must have /data and /artifacts mounted"
        assert Settings.from_env(_env(compose["services"][name])).data_dir == "/data"


def test_the_stack_app_uses_the_shared_topics(compose):
    """The stack's processors, trainer and sink process the app's events: same prefix, no demo prefix;
    the self-contained demo (private topics) is only in a profile."""
    services = compose["services"]
    prefixes = {Settings.from_env(_env(services[n])).topic_prefix for n in ("processors", "trainer", "sink", "app")}
    assert prefixes == {"ctloop."}
    assert services["app"]["command"][0] == "app"
    assert "profiles" not in services["app"]
    assert services["demo"].get("profiles") == ["demo"]
    from infra.cli import cli

    assert "app" in cli.commands, "the image's entry point must offer `ctloop app`"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it from Debian's packages)")
    return path


def test_docker_compose_config_validates_both_files():
    tool = _tool("docker-compose")
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", f)]
        proc = subprocess.run([tool, *args, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"docker-compose {' '.join(args)} config:\n{proc.stdout}{proc.stderr}"


def test_promtool_checks_the_prometheus_config():
    tool = _tool("promtool")
    proc = subprocess.run([tool, "check", "config", "infra/prometheus/prometheus.yml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool:\n{proc.stdout}{proc.stderr}"


def test_ctloop_environment_names_and_values_are_settings(compose):
    names = {f"CTLOOP_{f.name.upper()}" for f in fields(Settings)}
    for name in CTLOOP_SERVICES:
        env = _env(compose["services"][name])
        unknown = {k for k in env if k.startswith("CTLOOP_")} - names
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of infra.settings.Settings"
        settings = Settings.from_env(env)  # every value parses as its field's type
        assert settings.bootstrap_servers == "kafka:9092"
        host = settings.bootstrap_servers.split(":")[0]
        assert host in compose["services"], f"{name}: bootstrap host {host} is not a service"
        assert settings.schema_registry_url.startswith("http://schema-registry:")
        assert re.match(r"http://[^@]+@clickhouse:8123/", settings.clickhouse_url)
        assert settings.metrics_port > 0


def _published(service: dict) -> set[int]:
    out = set()
    for port in service.get("ports", []):
        out.add(int(str(port).split(":")[-1].split("/")[0]))
    return out


def test_ports(compose):
    services = compose["services"]
    assert 9090 in _published(services["prometheus"])
    assert 3000 in _published(services["grafana"])
    assert 8123 in _published(services["clickhouse"])
    assert 8081 in _published(services["schema-registry"])
    listeners = _env(services["kafka"])["KAFKA_LISTENERS"]
    assert ":9092" in listeners and any(str(p) in listeners for p in _published(services["kafka"]))
    ports = [Settings.from_env(_env(services[n])).metrics_port for n in CTLOOP_SERVICES]
    assert len(set(ports)) == len(ports), "metrics ports must differ"
    for name in CTLOOP_SERVICES:
        port = Settings.from_env(_env(services[name])).metrics_port
        assert str(port) in [str(p) for p in services[name].get("expose", [])], f"{name} must expose {port}"


def test_prometheus_targets_match_the_services_metrics_ports(compose, prometheus):
    services = compose["services"]
    targets: dict[str, set[int]] = {}
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.setdefault(host, set()).add(int(port))
    for name in CTLOOP_SERVICES:
        assert name in targets, f"prometheus does not scrape {name}"
        assert Settings.from_env(_env(services[name])).metrics_port in targets[name], name
    # the demo's processors subprocess serves on the demo's port + 1 (infra/child_env.py)
    assert Settings.from_env(_env(services["demo"])).metrics_port + 1 in targets["demo"]
    for host in targets:
        assert host in services or host == "localhost", f"scrape target {host} is not a compose service"
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounted


def _metric_names_in_code() -> set[str]:
    names = set()
    for path in ROOT.glob("**/*.py"):
        if {"tests", ".git"} & set(path.parts):
            continue
        text = path.read_text(errors="ignore")
        names |= set(re.findall(r'\.(?:counter|gauge|histogram)\(\s*"(ctloop_[a-z0-9_]+)"', text))
    return names


def test_grafana_dashboard_is_provisioned_and_uses_existing_metrics(compose):
    grafana = compose["services"]["grafana"]
    mounts = " ".join(grafana["volumes"])
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "./infra/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    provider = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/ctloop.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "infra/grafana/dashboards/ctloop.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("events/s", "funnel", "drift", "trigger", "training runs", "shadow", "promotions", "rollbacks"):
        assert topic in titles, f"dashboard has no {topic} panel"
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\b(ctloop_[a-z0-9_]+)", e)}
    missing = used - _metric_names_in_code()
    assert not missing, f"dashboard queries metrics no process defines: {sorted(missing)}"
