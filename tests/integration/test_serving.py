"""Broker -> worker -> ``drex serve`` end to end: recommendations with explanations, and
metrics on both processes that match what was sent."""

from __future__ import annotations

import json
import subprocess
import sys
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


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
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
