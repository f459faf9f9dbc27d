"""The metrics, the dashboard and the alerts, checked by the real Prometheus tools (Debian's
``prometheus`` package: ``promtool`` and the server) against a real worker and server.

* ``promtool check metrics`` accepts both ``/metrics`` outputs, and the server's carries
  the server's series only.
* ``promtool check rules`` accepts the alert rules.
* A Prometheus scraping a learning worker and a serving ``drex serve`` every second
  evaluates every dashboard expression and every alert expression through its query
  API: none is invalid, and none is empty while learning, but for the few listed in
  :data:`EMPTY_WHEN_HEALTHY` (errors that a healthy run has none of).

An alert expression is judged without its threshold: every comparison with a number
literal (``> 900``, ``== 1``) is cut out (:func:`without_thresholds`), so
``(age > 900) and on (instance) (owns == 1)`` becomes ``(age) and on (instance) (owns)``:
the series it compares exist and its joins match, which is what a healthy run can show
(the thresholds themselves are for incidents). Grafana's ``$__rate_interval`` becomes
15 s, four scrape intervals.

Without the binaries the tests skip, with the reason; with ``CI`` set they fail instead
(.ci/run installs the package).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import serving.metrics
from drex_model.types import Interaction
from streams.broker import EmbeddedBroker, free_port
from tests.integration.harness import Worker, applied_total, faulty_plan, send, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "infra" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))
GRAFANA_VARIABLES = {"$__rate_interval": "15s"}
# Expressions a healthy run legitimately leaves empty: a count of failures that did not
# happen has no series. Anything else empty is a wrong name, label or join.
EMPTY_WHEN_HEALTHY = {
    # 5xx answers: a healthy server gives none
    'sum by (endpoint) (rate(drex_http_requests_total{job="drex-server", status=~"5..'
    '"}[$__rate_interval]))',
    # topic incarnations re-anchored: only after a broker restarted empty
    'sum by (state) (increase(drex_source_resets_total{job="drex-worker"}[$__rate_interval]))',
    # redelivered or re-emitted interactions: only after a crash or a rebalance mid-take
    'sum by (reason) (rate(drex_interactions_skipped_total{job="drex-worker"}[$__rate_interval]))',
}
# a comparison with a number literal: `> 900`, `== 1`, `> 0.05`
THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9][0-9.e+-]*(?![0-9a-zA-Z_.])")


def binary(name: str) -> str:
    """The path of a Prometheus tool; skip without it, but fail in CI."""
    path = shutil.which(name)
    if path is None:
        why = f"`{name}` is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must test with it (.ci/run installs it)")
        pytest.skip(why)
    return path


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def check_metrics(text: str) -> None:
    """``promtool check metrics`` of an exposition; fails with promtool's complaints."""
    done = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
    )
    problems = (done.stdout + done.stderr).decode().strip()
    assert done.returncode == 0 and not problems, problems


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def server_families() -> set[str]:
    """The metric families serving/metrics.py defines, as the text format names them
    (a counter's with ``_total``, and their ``_created`` twins)."""
    names = set()
    for value in vars(serving.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + s for s in ("", "_total", "_created")}
    return names


def without_thresholds(expr: str) -> str:
    """``expr`` with every comparison against a number cut out (the module doc)."""
    return THRESHOLD.sub("", expr)


def test_without_thresholds_keeps_the_rest_of_the_expression() -> None:
    expr = (
        '(drex_a{job="w"} > 900) and on (instance) (drex_b == 1)'
        " and on (instance) (rate(drex_c_total[15m]) > 0)"
    )
    assert without_thresholds(expr) == (
        '(drex_a{job="w"}) and on (instance) (drex_b) and on (instance) (rate(drex_c_total[15m]))'
    )
    quantile = "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 0.05"
    assert without_thresholds(quantile) == quantile.removesuffix(" > 0.05")


def test_alert_rules_pass_promtool() -> None:
    done = subprocess.run(
        [binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


def start_server(state: Path, log: Path) -> Server:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "streams.cli", "serve", "--state-dir", str(state)),
                *("--port", str(port), "--refresh-interval", "0.2"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            get_text(f"{server.url}/healthz")
            return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                why = f"drex serve did not start:\n{log.read_text()[-3000:]}"
                raise AssertionError(why) from None
            time.sleep(0.3)


def test_the_servers_metrics_pass_promtool_and_carry_no_worker_series(tmp_path: Path) -> None:
    """``drex serve`` runs in the CLI that also holds the worker's commands; their metrics
    must not reach the server's /metrics (they read 0 there, and collide with the worker's
    series in any query that does not select a job)."""
    binary("promtool")
    (tmp_path / "state").mkdir()
    server = start_server(tmp_path / "state", tmp_path / "server.log")
    try:
        get_text(f"{server.url}/healthz")  # a request, so that the request series exist
        text = get_text(f"{server.url}/metrics")
    finally:
        server.stop()
    check_metrics(text)
    drex = {name for name in families(text) if name.startswith("drex_")}
    assert drex and drex <= server_families(), sorted(drex - server_families())


# --- a Prometheus over a learning worker and a server -------------------------------------


class Prometheus:
    """A Prometheus on a free 127.0.0.1 port scraping ``targets`` (job -> host:port) every
    second, with the stack's alert rules."""

    def __init__(self, targets: dict[str, str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log_path = folder / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"prometheus did not start:\n{self.log_tail()}")
            time.sleep(0.3)

    def _ready(self) -> bool:
        try:
            get_text(f"http://127.0.0.1:{self.port}/-/ready")
            return True
        except OSError:
            return False

    def query(self, expr: str) -> tuple[str, list[dict[str, Any]] | str]:
        """(``success``, the result's series) or (``error``, Prometheus' message)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        try:
            body = json.loads(get_text(url))
        except urllib.error.HTTPError as err:
            body = json.loads(err.read())
        if body["status"] != "success":
            return body["status"], f"{body.get('errorType')}: {body.get('error')}"
        return "success", list(body["data"]["result"])

    def series(self, expr: str) -> list[dict[str, Any]]:
        status, result = self.query(expr)
        assert status == "success" and isinstance(result, list), f"{expr}: {result}"
        return result

    def value(self, expr: str) -> float | None:
        result = self.series(expr)
        return float(result[0]["value"][1]) if result else None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def dashboard_exprs() -> list[str]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            out += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    assert out
    return out


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


@pytest.fixture
def stack(
    sample_rows: list[Interaction],
    fresh_broker: EmbeddedBroker,
    tiny_encoder_dir: Path,
    tmp_path: Path,
) -> Iterator[tuple[Worker, Server, Prometheus, int]]:
    """A worker and a server with a Prometheus scraping both, and the interactions the
    worker is about to learn (sent by the test)."""
    binary("prometheus")
    state = tmp_path / "state"
    worker = Worker(fresh_broker, tiny_encoder_dir, state, tmp_path / "worker.log")
    server = start_server(state, tmp_path / "server.log")
    prometheus = Prometheus(
        {"drex-worker": f"127.0.0.1:{worker.port}", "drex-server": f"127.0.0.1:{server.port}"},
        tmp_path / "prometheus",
    )
    try:
        yield worker, server, prometheus, len(sample_rows)
    finally:
        prometheus.stop()
        server.stop()
        worker.stop()


@pytest.mark.slow
def test_dashboard_and_alert_expressions_evaluate_on_a_learning_stack(
    stack: tuple[Worker, Server, Prometheus, int],
    sample_rows: list[Interaction],
    fresh_broker: EmbeddedBroker,
) -> None:
    worker, server, prometheus, _ = stack
    plan = faulty_plan(sample_rows)
    wait_until(lambda: worker.metric("drex_owns_learner") == 1.0, 90, "the learner", worker)
    send(fresh_broker, plan.events)
    users = sorted(plan.truth.per_user)[:5]

    def learned_and_served() -> bool:
        for user in users:  # API traffic, for the request latency series
            with contextlib.suppress(urllib.error.HTTPError):  # 503 until it has loaded
                get_text(f"{server.url}/users/{user}/recommendations?k=5")
        with contextlib.suppress(urllib.error.HTTPError):  # and a client's mistake: 400
            get_text(f"{server.url}/users/{users[0]}/recommendations?k=0")
        return applied_total(worker) >= plan.truth.interactions

    wait_until(learned_and_served, 150, f"{plan.truth.interactions} interactions", worker)
    time.sleep(3)  # a few more scrapes of the final state

    # the worker's and the server's /metrics, as Prometheus read them, pass promtool
    check_metrics(get_text(f"http://127.0.0.1:{worker.port}/metrics"))
    check_metrics(get_text(f"{server.url}/metrics"))

    invalid, empty = [], []
    # (what, expression, must it return series while learning?)
    queries = [(e, grafana(e), e not in EMPTY_WHEN_HEALTHY) for e in dashboard_exprs()]
    for name, expr in alert_exprs().items():
        queries.append((name, expr, False))  # an alert that does not fire is empty
        queries.append((f"{name} without thresholds", without_thresholds(expr), True))
    for what, expr, needed in queries:
        status, result = prometheus.query(expr)
        if status != "success":
            invalid.append(f"{what}: {result}")
        elif needed and not result:
            empty.append(what)
    assert not invalid, "\n".join(invalid)
    assert not empty, "empty while learning:\n" + "\n".join(empty)

    # the consumer lag saw the backlog (the join and the learner are behind while the
    # events arrive), and falls to nothing on the source topics once all is learned and
    # committed; join-ticks are written every 0.5 s, so a few always wait for the next
    # commit (faust commits every 2.8 s)
    backlog = prometheus.value(
        "max_over_time(sum(drex_consumer_lag_messages"
        '{job="drex-worker", topic!="join-ticks"})[5m:1s])'
    )
    assert backlog is not None and backlog > 0
    topics = {s["metric"]["topic"] for s in prometheus.series("drex_consumer_lag_messages")}
    assert topics == {"reviews", "ratings", "join-ticks", "interactions"}, topics
    lag = 'drex_consumer_lag_messages{job="drex-worker", topic!="join-ticks"} > 0'
    try:
        wait_until(lambda: not prometheus.series(lag), 30, "the consumer lag to fall to 0", worker)
    except AssertionError:
        left = {
            (s["metric"]["topic"], s["metric"]["partition"]): s["value"][1]
            for s in prometheus.series(lag)
        }
        raise AssertionError(f"lag left: {left}") from None
    ticks = prometheus.value('max(drex_consumer_lag_messages{topic="join-ticks"})')
    assert ticks is not None and ticks < 50
