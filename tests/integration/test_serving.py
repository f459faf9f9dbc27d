"""Broker -> worker -> ``drex serve`` end to end: recommendations with explanations, and
metrics on both processes that match what was sent."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from drex_model.types import Interaction
from streams.broker import EmbeddedBroker, free_port
from streams.metrics import scrape
from tests.integration.harness import Worker, applied_total, faulty_plan, send, wait_until

pytestmark = pytest.mark.integration


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_stream_then_serve_recommendations_and_metrics(
    sample_rows: list[Interaction],
    fresh_broker: EmbeddedBroker,
    tiny_encoder_dir: Path,
    tmp_path: Path,
) -> None:
    plan = faulty_plan(sample_rows)
    truth = plan.truth
    state = tmp_path / "state"
    worker = Worker(fresh_broker, tiny_encoder_dir, state, tmp_path / "worker.log")
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "streams.cli", "serve", "--state-dir", str(state)),
            *("--port", str(port), "--refresh-interval", "0.2"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        send(fresh_broker, plan.events)
        wait_until(
            lambda: applied_total(worker) >= truth.interactions,
            180,
            f"{truth.interactions} interactions",
            worker,
        )

        def caught_up() -> bool:
            try:
                status, body = get(f"{url}/readyz")
            except OSError:
                return False
            return status == 200 and body["learner_interactions"] == truth.interactions

        wait_until(caught_up, 60, "the server to catch up", worker)
        worker_metrics = worker.metrics()

        users = sorted(truth.per_user, key=lambda u: -truth.per_user[u])[:20]
        lists = [get(f"{url}/users/{u}/recommendations?k=10") for u in users]
        assert all(status == 200 for status, _ in lists)
        assert all(body["kind"] == "personal" and len(body["items"]) == 10 for _, body in lists)
        explained = [r for _, body in lists for r in body["items"] if r["explanation"]]
        assert len(explained) >= 10, "the sample's reviews share aspect words"
        assert any(r["quote"] for r in explained), "a sentence of a positive review holds some"
        assert all(set(r["explanation"]) == {*r["aspects"], *r["opinions"]} for r in explained)
        status, body = get(f"{url}/users/somebody-new/recommendations?k=3")
        assert status == 200 and body["kind"] == "fallback" and len(body["items"]) == 3
        status, body = get(f"{url}/users/{users[0]}/recommendations?k=0")
        assert status == 400 and body["error"]["code"] == "bad_k"
        server_metrics = scrape(port)
    finally:
        server.terminate()
        server_code = server.wait(30)
        log.close()
        assert worker.stop() == 0, worker.log_tail()
    assert server_code == 0, (tmp_path / "server.log").read_text()[-3000:]

    # the worker counted what was sent: messages per topic, join outcomes, dead letters
    sent = Counter(topic for topic, _, _ in plan.events)
    for topic in ("reviews", "ratings"):
        assert worker_metrics[f'drex_events_in_total{{topic="{topic}"}}'] == sent[topic]
    outcome = 'drex_join_outcomes_total{{outcome="{}"}}'
    assert worker_metrics[outcome.format("both")] == truth.both
    assert worker_metrics[outcome.format("duplicate")] == truth.duplicates
    # a lone half is emitted alone: review-only plus rating-only interactions
    lone = (
        worker_metrics[outcome.format("review_only")]
        + worker_metrics[outcome.format("rating_only")]
    )
    assert lone == truth.review_only + truth.rating_only
    for reason, count in truth.malformed_reasons.items():
        assert worker_metrics[f'drex_dead_letters_total{{reason="{reason}"}}'] == count
    assert worker_metrics["drex_interactions_applied_total"] == truth.interactions
    assert worker_metrics["drex_users"] == len(truth.per_user)
    assert worker_metrics["drex_items"] == len(truth.per_item)
    assert worker_metrics["drex_faiss_items"] == len(truth.per_item)

    # and the server what it served
    endpoint = (
        'drex_http_requests_total{{endpoint="/users/{{user_id}}/recommendations",status="{}"}}'
    )
    assert server_metrics[endpoint.format("200")] == len(users) + 1
    assert server_metrics[endpoint.format("400")] == 1
    assert server_metrics['drex_recommendations_total{kind="personal"}'] == len(users)
    assert server_metrics['drex_recommendations_total{kind="fallback"}'] == 1
    assert server_metrics["drex_serving_users"] == len(truth.per_user)
    assert server_metrics["drex_serving_items"] == len(truth.per_item)
    assert server_metrics["drex_serving_ready"] == 1.0


# --- one `drex serve` process on its own: no broker, no worker --------------------------


class Serve:
    """``drex serve`` over a state folder no worker has written (never ready), with its
    own temporary directory (TMPDIR), so its replica folders can be counted."""

    def __init__(self, tmp: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.port = free_port()
        self.log = tmp / f"serve-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "streams.cli", "serve"),
                    *("--state-dir", str(tmp / "state"), "--port", str(self.port), *flags),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(self.tmp), **(env or {})},
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(f"{self.url}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def replica_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("drex-replica-*"))

    def metric(self, name: str) -> float:
        return scrape(self.port).get(name, 0.0)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(30)


def test_a_killed_server_leaves_no_replica_folder_after_the_next_start(tmp_path: Path) -> None:
    first = Serve(tmp_path)
    try:
        [folder] = first.replica_folders()
        first.process.send_signal(signal.SIGKILL)  # no close(), no cleanup of any kind
        first.process.wait(30)
        assert first.replica_folders() == [folder]  # left behind, as any SIGKILL leaves it
        second = Serve(tmp_path)
        try:
            [current] = second.replica_folders()  # the dead one's is gone, its own is there
            assert current != folder and (current / "owner.lock").is_file()
            assert (current / "owner.lock").read_text().strip() == str(second.process.pid)
        finally:
            assert second.stop() == 0, second.log.read_text()
        assert second.replica_folders() == []  # a clean stop removes its own
    finally:
        first.stop()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``),
    sending ``trickle`` one byte every 0.1 s meanwhile; whatever the server sent before
    closing is read and dropped."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        if sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
            except OSError:  # reset by a server that closed
                return time.monotonic() - started
            sent += 1
        if select.select([sock], [], [], 0.1)[0]:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - started
            except OSError:
                return time.monotonic() - started
    return None


def test_slow_and_vanishing_clients_are_cut_off_and_not_counted_as_errors(
    tmp_path: Path,
) -> None:
    server = Serve(tmp_path, "--client-timeout", "1")
    try:
        headers = b"GET /healthz HTTP/1.1\r\nHost: drex\r\nX-Slow: " + b"a" * 200
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            # headers byte by byte, never finished: closed after the timeout
            took = _closed_within(sock, 10, trickle=headers)
            assert took is not None and 0.8 < took < 4, took
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            took = _closed_within(sock, 10)  # connects and says nothing
            assert took is not None and 0.8 < took < 4, took

        # a body that stops halfway: 408 after the timeout, then the connection closes
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(10)
            started = time.monotonic()
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: drex\r\nContent-Type: application/json\r\n"
                b'Content-Length: 200\r\n\r\n{"user_id": "u'
            )
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"Connection: close" in answer and b"request_timeout" in answer
            assert 0.8 < time.monotonic() - started < 4
            assert _closed_within(sock, 5) is not None

        # a body cut off by the client going away: 499, not 500
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: drex\r\nContent-Type: application/json\r\n"
                b'Content-Length: 200\r\n\r\n{"user_id": "u'
            )
            time.sleep(0.2)
        series = 'drex_http_requests_total{{endpoint="/predict",status="{}"}}'
        deadline = time.monotonic() + 10
        while server.metric(series.format(499)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.metric(series.format(499)) == 1
        assert server.metric(series.format(408)) == 1
        assert server.metric(series.format(500)) == 0
        # a client that is not slow is served as ever
        assert get(f"{server.url}/healthz")[0] == 200
    finally:
        assert server.stop() == 0, server.log.read_text()
    assert "Traceback" not in server.log.read_text()


def test_the_api_key_from_the_environment_guards_the_api(tmp_path: Path) -> None:
    server = Serve(tmp_path, env={"DREX_API_KEY": "k-123"})
    try:
        recommendations = f"{server.url}/users/u/recommendations"
        status, body = get(recommendations)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert get(recommendations, {"X-API-Key": "k-12"})[0] == 401
        assert get(recommendations, {"Authorization": "Bearer k-123"})[0] == 503  # not ready
        assert get(recommendations, {"X-API-Key": "k-123"})[0] == 503
        for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            try:
                assert urllib.request.urlopen(server.url + probe, timeout=10).status == 200
            except urllib.error.HTTPError as err:
                assert (probe, err.code) == ("/readyz", 503)
        status, document = get(f"{server.url}/openapi.json")
        assert "bearer" in document["components"]["securitySchemes"]
    finally:
        assert server.stop() == 0, server.log.read_text()
    assert "k-123" not in server.log.read_text()


def test_a_server_without_a_store_says_where_it_expects_one(tmp_path: Path) -> None:
    """``drex serve --state-dir`` pointing at a folder no worker writes: 503, and the log
    and /readyz name the store's path (the log says it again every 30 s)."""
    server = Serve(tmp_path)
    expected = str(tmp_path / "state" / "learner")
    try:
        status, body = get(f"{server.url}/readyz")
        assert status == 503 and expected in body["reason"]
        deadline = time.monotonic() + 10
        while f"no learner store at {expected}" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.1)
    finally:
        assert server.stop() == 0, server.log.read_text()
