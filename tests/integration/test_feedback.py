"""``POST /feedback`` on a real ``drex serve`` and a real broker: the entries arrive on the
topics as contract events the worker accepts, a bad request publishes nothing, and a
server without ``--feedback`` or without a broker says so."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC, validate
from tests.integration.harness import read_topic
from tests.integration.test_serving import Serve

pytestmark = pytest.mark.integration


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_feedback_reaches_the_topics_as_contract_events(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    server = Serve(tmp_path, "--feedback", "--broker", fresh_broker.url)
    try:
        entries = [
            {
                "user_id": "u1",
                "item_id": "i1",
                "rating": 5,
                "text": "Warm tone.",
                "event_time": 1e9,
            },
            {"user_id": "u2", "item_id": "i1", "rating": 2},
        ]
        status, body = post(f"{server.url}/feedback", entries)
        assert (status, body) == (202, {"reviews": 1, "ratings": 2})
        again = post(f"{server.url}/feedback", entries[:1])  # a retry: the same event ids
        assert again == (202, {"reviews": 1, "ratings": 1})

        bad = [entries[1], {"user_id": "u3", "item_id": "i2", "rating": 7}]
        status, body = post(f"{server.url}/feedback", bad)
        assert (status, body["error"]["code"]) == (400, "bad_body")  # the document's 1..5
        assert body["error"]["message"].startswith("1.rating: ")

        reviews = [validate(REVIEWS_TOPIC, v) for _, v in read_topic(fresh_broker, "reviews")]
        ratings = read_topic(fresh_broker, "ratings")
        assert [(r.user_id, r.item_id, r.text) for r in reviews] == [("u1", "i1", "Warm tone.")] * 2
        assert reviews[0].event_id == reviews[1].event_id  # the worker drops the resend
        rated = sorted((k, validate(RATINGS_TOPIC, v).rating) for k, v in ratings)
        assert rated == [(b"u1", 5.0), (b"u1", 5.0), (b"u2", 2.0)]  # nothing of the bad request
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_feedback_is_off_unless_asked_and_a_missing_broker_is_503(tmp_path: Path) -> None:
    entry = [{"user_id": "u", "item_id": "i", "rating": 4}]
    off = Serve(tmp_path)
    try:
        status, body = post(f"{off.url}/feedback", entry)
        assert status == 404 and body["error"]["code"] == "not_found"
        status, document = get_json(f"{off.url}/openapi.json")
        assert status == 200 and "/feedback" not in document["paths"]
    finally:
        assert off.stop() == 0, off.log.read_text()
    nobody = Serve(tmp_path, "--feedback", "--broker", "kafka://127.0.0.1:1")
    try:
        status, body = post(f"{nobody.url}/feedback", entry)
        assert status == 503 and body["error"]["code"] == "broker_unavailable"
        assert get_ready(nobody.url) in (200, 503)  # the rest of the API still answers
    finally:
        assert nobody.stop() == 0, nobody.log.read_text()


def get_json(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), json.loads(response.read())


def get_ready(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
