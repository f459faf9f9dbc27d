"""The production stack in infra/ agrees with the code.

Docker does not run on this project's machines, so the stack is checked statically: its
files parse, its dashboard and alerts use metrics the code registers (scoped to the job
that exposes them), and the compose commands, mounts and ports fit together.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, Metric
from prometheus_client.metrics import MetricWrapperBase

import serving.metrics
import streams.metrics
from streams.cli import build_parser
from streams.worker import settings_from_args

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DASHBOARD = INFRA / "grafana" / "dashboards" / "drex.json"
METRIC = re.compile(r"\bdrex_[a-z0-9_]+")
# a metric name and the label matchers right after it: drex_x{job="drex-worker", ...}
SELECTOR = re.compile(r"\b(drex_[a-z0-9_]+)(?:\{([^}]*)\})?")
JOB = re.compile(r'job="([^"]*)"')
# the series names a family of each type exposes (a counter family drops its `_total`)
SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
JOB_MODULES: dict[str, ModuleType] = {
    "drex-worker": streams.metrics,
    "drex-server": serving.metrics,
}


def load(relative: str) -> Any:
    return yaml.safe_load((INFRA / relative).read_text(encoding="utf-8"))


def series(families: list[Metric]) -> dict[str, str]:
    """Series name -> family name, of the ``drex_`` families."""
    return {
        f.name + suffix: f.name
        for f in families
        if f.name.startswith("drex_")
        for suffix in SERIES[f.type]
    }


def module_series(module: ModuleType) -> dict[str, str]:
    metrics = [m for m in vars(module).values() if isinstance(m, MetricWrapperBase)]
    return series([family for m in metrics for family in m.describe()])


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    dashboard = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    alerts = [r["expr"] for g in load("prometheus/alerts.yml")["groups"] for r in g["rules"]]
    assert dashboard and alerts
    return dashboard + alerts


def services() -> dict[str, Any]:
    return dict(load("docker-compose.yml")["services"])


def command(service: str) -> list[str]:
    cmd = services()[service]["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def binds(service: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (INFRA / source).resolve()
    return out


def host_path(service: str, container_path: str) -> Path:
    """Where a container path of ``service`` lies in this repository (via its bind mounts)."""
    path = PurePosixPath(container_path)
    for target, source in binds(service).items():
        if path.is_relative_to(target):
            return source / path.relative_to(target)
    raise AssertionError(f"{service} has no bind mount holding {container_path}")


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


# --- (a), (b): the files parse --------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(INFRA) for p in INFRA.rglob("*.y*ml")), ids=str
)
def test_yaml_parses(path: Path) -> None:
    assert isinstance(load(str(path)), dict)


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert (dashboard["uid"], dashboard["schemaVersion"]) == ("drex", 39)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = load("grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


# --- (c): every metric exists, and is read from the job that exposes it ------------------


def test_every_metric_used_is_registered() -> None:
    registered = set(series(list(REGISTRY.collect())))
    used = {name for expr in exprs() for name in METRIC.findall(expr)}
    assert used and used <= registered, sorted(used - registered)


def test_every_metric_is_selected_by_the_job_that_exposes_it() -> None:
    jobs = {c["job_name"] for c in load("prometheus/prometheus.yml")["scrape_configs"]}
    assert jobs == set(JOB_MODULES)
    for expr in exprs():
        assert set(JOB.findall(expr)) <= jobs, expr
        for name, matchers in SELECTOR.findall(expr):
            job = JOB.findall(matchers)
            assert len(job) == 1, f"{name} has no job matcher in {expr}"
            assert name in module_series(JOB_MODULES[job[0]]), f"{name} is not in {job[0]}"


def test_dashboard_shows_every_metric() -> None:
    used = {name for expr in exprs() for name in METRIC.findall(expr)}
    for module in JOB_MODULES.values():
        exposed = module_series(module)
        shown = {exposed[name] for name in used if name in exposed}
        assert shown == set(exposed.values()), sorted(set(exposed.values()) - shown)


# --- (d), (e): compose, Dockerfile and Prometheus fit together ---------------------------


def test_compose_services_and_mounts() -> None:
    compose = load("docker-compose.yml")
    assert set(compose["services"]) == {"kafka", "worker", "server", "prometheus", "grafana"}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared {source}"
    # the server reads the worker's learner store: the same named volume, the same path
    assert "state:/state" in compose["services"]["worker"]["volumes"]
    assert "state:/state" in compose["services"]["server"]["volumes"]
    for name in ("worker", "server"):
        build = compose["services"][name]["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).is_file()


def test_compose_commands_are_drex_commands() -> None:
    parser = build_parser()
    for name in ("worker", "server"):
        try:
            parser.parse_args(command(name))
        except SystemExit:
            pytest.fail(f"`drex {shlex.join(command(name))}` does not parse")
    settings = settings_from_args(parser.parse_args(command("worker")), environment("worker"))
    assert settings.metrics_host == "0.0.0.0"  # scraped from the prometheus container
    assert settings.broker == "kafka://kafka:9092"


def test_scrape_targets_use_the_ports_the_commands_bind() -> None:
    config = load("prometheus/prometheus.yml")
    assert config["global"]["scrape_interval"] == "5s"
    targets = [
        t for c in config["scrape_configs"] for s in c["static_configs"] for t in s["targets"]
    ]
    assert sorted(targets) == ["server:8000", "worker:9101"]
    for target in targets:
        host, port = target.split(":")
        args = command(host)
        ports = {args[i + 1] for i, arg in enumerate(args[:-1]) if arg.endswith("-port")}
        assert ports == {port}, f"{host} binds {ports}, Prometheus scrapes {port}"


def test_prometheus_and_grafana_find_their_files() -> None:
    config_arg = next(a for a in command("prometheus") if a.startswith("--config.file="))
    config = host_path("prometheus", config_arg.split("=", 1)[1])
    assert config == INFRA / "prometheus" / "prometheus.yml"
    for rule_file in yaml.safe_load(config.read_text())["rule_files"]:
        assert (config.parent / rule_file).is_file(), rule_file
    for group in load("prometheus/alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"], rule

    provider = load("grafana/provisioning/dashboards/drex.yml")["providers"][0]
    assert (host_path("grafana", provider["options"]["path"]) / DASHBOARD.name).is_file()
    assert host_path("grafana", "/etc/grafana/provisioning") == INFRA / "grafana/provisioning"
    home = environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home) == DASHBOARD


def test_image_pins_the_torch_of_setup_script() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    pin = re.compile(r"torch==[0-9.]+")
    assert pin.findall(dockerfile) == pin.findall((REPO / "scripts" / "setup.sh").read_text())
    assert "download.pytorch.org/whl/cpu" in dockerfile
    assert 'ENTRYPOINT ["drex"]' in dockerfile
