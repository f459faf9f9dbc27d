"""The production stack in infra/ agrees with the code.

Docker does not run on this project's machines, so the stack is checked statically: its
files parse, its dashboard and alerts use metrics the code registers (scoped to the job
that exposes them), the compose commands, mounts and ports fit together, and what it
exposes is closed by default (loopback ports, no Prometheus lifecycle API, a required
Grafana password, the drex API key passed through).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, Metric
from prometheus_client.metrics import MetricWrapperBase

import serving.metrics
import streams.metrics
from serving.openapi import PUBLIC_PATHS
from serving.settings import ServerSettings
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
    # the worker's metrics have a registry of their own (in the default one in a worker)
    registered = set(series([*REGISTRY.collect(), *streams.metrics.REGISTRY.collect()]))
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


# --- (f): what the stack exposes, by default --------------------------------------------

# compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
# ${VAR?error} (the colon forms treat an empty variable as unset)
INTERPOLATION = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?)([-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as docker compose reads it with the variables ``env``; a required
    variable that is missing raises ValueError, as compose refuses to start."""

    def one(m: re.Match[str]) -> str:
        dollar, name, colon, op, arg, bare = m.groups()
        if dollar:
            return "$"
        if bare:
            return env.get(bare, "")
        value = env.get(name)
        unset = value is None or (colon == ":" and value == "")
        if op == "-" and unset:
            return str(arg)
        if op == "?" and unset:
            raise ValueError(f"{name}: {arg}")
        return value or ""

    return INTERPOLATION.sub(one, text)


def interpolated(env: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as compose sees it with the variables ``env``."""

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, env)
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return dict(walk(load("docker-compose.yml")))


def published(compose: Mapping[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Service -> (host address, host port) of each published port."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # the long syntax
                out.setdefault(name, []).append((port.get("host_ip", ""), str(port["published"])))
                continue
            parts = str(port).split(":")
            # HOST_PORT:CONTAINER_PORT (every interface) or IP:HOST_PORT:CONTAINER_PORT
            address = ":".join(parts[:-2]) if len(parts) > 2 else ""
            out.setdefault(name, []).append(
                (address.strip("[]"), parts[-2] if len(parts) > 1 else "")
            )
    return out


GRAFANA_PASSWORD = {"GRAFANA_ADMIN_PASSWORD": "a-password"}


def test_every_published_port_binds_loopback_unless_told_otherwise() -> None:
    ports = published(interpolated(GRAFANA_PASSWORD))
    assert set(ports) == {"server", "prometheus", "grafana"}  # kafka, worker: internal
    assert sorted(p for bound in ports.values() for _, p in bound) == ["3000", "8000", "9090"]
    for service, bound in ports.items():
        for address, port in bound:
            assert address, f"{service} publishes {port} on every interface"
            assert ipaddress.ip_address(address).is_loopback, (service, address, port)
    # one variable opens them all, for whoever puts a firewall or a proxy in front
    opened = published(interpolated({**GRAFANA_PASSWORD, "DREX_BIND": "0.0.0.0"}))
    assert {a for bound in opened.values() for a, _ in bound} == {"0.0.0.0"}


def test_prometheus_has_no_lifecycle_or_admin_api() -> None:
    args = command("prometheus")
    assert not [a for a in args if "enable-lifecycle" in a or "enable-admin-api" in a], args


def test_grafana_has_no_default_admin_password() -> None:
    raw = environment("grafana")["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", raw), raw
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolated({})
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolated({"GRAFANA_ADMIN_PASSWORD": ""})  # empty is no password either
    grafana = interpolated(GRAFANA_PASSWORD)["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "a-password"
    assert "GF_SECURITY_ADMIN_USER" not in grafana or grafana["GF_SECURITY_ADMIN_USER"]
    # anonymous visitors may only look
    assert grafana.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"


def test_the_server_takes_its_api_key_from_the_environment() -> None:
    def server_settings(env: Mapping[str, str]) -> ServerSettings:
        compose = interpolated({**GRAFANA_PASSWORD, **env})
        variables = {k: str(v) for k, v in compose["services"]["server"]["environment"].items()}
        return ServerSettings.from_env(variables)

    assert server_settings({}).api_key == ""  # none set: an open API on loopback
    assert server_settings({"DREX_API_KEY": "k-1"}).api_key == "k-1"
    assert "DREX_API_KEY" not in services()["server"]["command"]  # never on a command line


def test_probes_and_scrapes_need_no_api_key() -> None:
    """The server's healthcheck and Prometheus' scrape reach paths the API key does not
    guard (serving/openapi.py PUBLIC_PATHS), so neither needs the key."""
    healthcheck = " ".join(services()["server"]["healthcheck"]["test"])
    paths = re.findall(r"localhost:8000(/[\w./-]*)", healthcheck)
    assert paths and set(paths) <= PUBLIC_PATHS, paths
    for job in load("prometheus/prometheus.yml")["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") in PUBLIC_PATHS
        assert "authorization" not in job and "basic_auth" not in job, job["job_name"]


# --- (g): alerts that fire when something is wrong, not at default settings ---------------


def alert(name: str) -> dict[str, Any]:
    rules = [r for g in load("prometheus/alerts.yml")["groups"] for r in g["rules"]]
    return next(r for r in rules if r["alert"] == name)


def test_the_latency_alert_ignores_scrapes_probes_and_the_openapi_document() -> None:
    """``/metrics`` itself is slow (it renders every series), and no user waits on it."""
    expr = alert("DrexServerLatencyHigh")["expr"]
    excluded = re.findall(r'endpoint!~"([^"]*)"', expr)
    assert len(excluded) == 1, expr
    assert set(excluded[0].split("|")) == PUBLIC_PATHS


def test_the_checkpoint_alert_stays_quiet_at_default_settings() -> None:
    """The learner checkpoints at least every DREX_CHECKPOINT_INTERVAL seconds, however
    slow the batches come: the alert's threshold is twice that default."""
    from streams.settings import WorkerSettings

    interval = WorkerSettings().checkpoint_interval
    (threshold,) = re.findall(
        r"drex_checkpoint_age_seconds\{[^}]*\} > (\d+)", alert("DrexCheckpointStale")["expr"]
    )
    assert interval > 0 and float(threshold) >= 2 * interval
