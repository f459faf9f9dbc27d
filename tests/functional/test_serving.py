"""The serving replica and the HTTP API over a learner store written by the worker's code.

The store is filled by :class:`streams.agents.learn.LearnerSession`, the same object the
worker runs per micro-batch (no broker needed), so the replica reads exactly what a
worker writes; the replica is a real RocksDB secondary of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from serving.openapi import spec
from serving.replica import NotReady, Replica
from serving.server import build_app
from streams.agents.index import IndexFeeder
from streams.agents.learn import LearnerSession
from streams.events import InteractionEvent
from streams.settings import WorkerSettings
from tests.functional.streamed import sample_events


class Stream:
    """A learner session over a temporary state folder, fed batch by batch."""

    def __init__(self, tmp: Path, encoder: Path, overrides: tuple[str, ...] = ()) -> None:
        self.settings = WorkerSettings(
            state_dir=str(tmp / "state"),
            encoder=str(encoder),
            encoder_max_tokens=32,
            device="cpu",
            torch_threads=1,
            checkpoint_every=0,
            model_overrides=overrides,
        )
        self.session = LearnerSession(self.settings, IndexFeeder(publish_every=0.0))
        self.events = sample_events(tmp / "sample.jsonl", users=60, groups=7)
        self.offset = 0

    def feed(self, n: int) -> list[InteractionEvent]:
        batch = self.events[self.offset : self.offset + n]
        self.session.process([(self.offset + j, e) for j, e in enumerate(batch)])
        self.offset += n
        return batch


@pytest.fixture
def stream(
    tmp_path: Path, tiny_encoder_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Stream]:
    """A stream; indirect parametrisation gives it DReXConfig overrides."""
    s = Stream(tmp_path, tiny_encoder_dir, getattr(request, "param", ()))
    yield s
    s.session.release(save_index=False)


@pytest.fixture
def replica(stream: Stream) -> Iterator[Replica]:
    r = Replica(stream.settings.learner_path)
    yield r
    r.close()


def test_replica_scores_match_the_learner_and_follow_it(stream: Stream, replica: Replica) -> None:
    assert not replica.refresh() and not replica.ready  # no store yet
    with pytest.raises(NotReady):
        replica.recommend("anyone")
    stream.feed(60)
    assert replica.refresh() and replica.ready
    stream.feed(60)  # fewer than step_size ratings in all: no optimiser step, exact state
    assert replica.refresh()
    learner = stream.session.learner
    assert replica.batches == 2 and replica.applied == 120
    assert len(replica.users) == len(learner.users) and len(replica.items) == len(learner.items)
    assert len(replica.index) == len(learner.items)

    for user in list(learner.users.ids)[:5]:
        items, scores = replica.exact_scores(user)
        expected = learner.ranking_scores([user], items)[0]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
        item = items[0]
        assert replica.predict(user, item).predicted_rating == pytest.approx(
            learner.predict_one(user, item), abs=1e-4
        )
        # the profile words are the learner's, strongest first
        profile = replica.profile("users", user, k=5)
        want = sorted(
            learner.keyword_profiles("users", [user])[0].items(), key=lambda kv: (-kv[1], kv[0])
        )[:5]
        assert [kw.word for kw in profile.keywords] == [w for w, _ in want]
        assert profile.interactions == int(learner.users.count[learner.users.index[user]])

    # a later batch reaches the replica incrementally, new users and all
    before = set(replica.users.index)
    batch = stream.feed(60)
    assert replica.refresh() and not replica.refresh()  # nothing new the second time
    assert {e.user_id for e in batch} <= set(replica.users.index)
    assert set(replica.users.index) > before
    assert replica.applied == 180
    # the FAISS label -> item row map follows the index, new items included
    indexed = replica.index.ids()
    assert len(indexed) == len(replica.items)
    rows = replica.label_rows[replica.index.labels(indexed)]
    assert rows.tolist() == [replica.items.index[i] for i in indexed]


def test_recommendations_exclude_seen_items_and_explain(stream: Stream, replica: Replica) -> None:
    stream.feed(150)
    replica.refresh()
    learner = stream.session.learner
    user = max(learner.users.ids, key=lambda u: len(learner.seen_items(u)))
    seen = learner.seen_items(user)
    recs = replica.recommend(user, k=10)
    assert recs.kind == "personal" and recs.fallback_reason is None
    assert len(recs.items) == min(10, len(replica.items) - len(seen))
    assert not {r.item_id for r in recs.items} & seen
    assert [r.score for r in recs.items] == sorted((r.score for r in recs.items), reverse=True)
    assert all(1.0 <= r.predicted_rating <= 5.0 for r in recs.items)
    assert any(r.explanation for r in recs.items)  # the sample's reviews share aspect words
    with_seen = replica.recommend(user, k=len(replica.items), exclude_seen=False)
    assert {r.item_id for r in with_seen.items} & seen

    cold = replica.recommend("nobody-at-all", k=5)
    assert (
        cold.kind == "fallback" and cold.fallback_reason == "unknown_user" and len(cold.items) == 5
    )
    counts = [replica.items.rating_count[replica.items.index[r.item_id]] for r in cold.items]
    assert counts == sorted(counts, reverse=True)


def test_retrieval_recovers_most_of_the_exact_top_k(stream: Stream, replica: Replica) -> None:
    """Candidates (FAISS + popular) re-ranked exactly, against ranking every item."""
    stream.feed(300)
    replica.candidates = 20  # few candidates on a small catalogue, so retrieval matters
    replica.popular_candidates = 10
    replica.prior_candidates = 10
    replica.refresh()
    assert len(replica.average_top) == 10
    hits = total = 0
    for user in list(replica.users.index)[:30]:
        items, scores = replica.exact_scores(user)
        seen = replica.users.seen[user]
        exact = [items[j] for j in np.argsort(-scores, kind="stable") if items[j] not in seen][:5]
        got = [r.item_id for r in replica.recommend(user, k=5).items]
        hits += len(set(exact) & set(got))
        total += len(exact)
    assert hits / total >= 0.6


# --- HTTP -----------------------------------------------------------------------------


def _schema(path: str, method: str, status: str, api_key: bool = False) -> dict[str, Any]:
    """An answer's schema, with the document's components (its $refs point there)."""
    document = spec(api_key)
    operation = document["paths"][path][method]
    schema: dict[str, Any] = operation["responses"][status]["content"]["application/json"]["schema"]
    return {**schema, "components": document["components"]}


@pytest.mark.asyncio
async def test_http_api(stream: Stream, replica: Replica) -> None:
    app = build_app(replica, refresh_interval=0.05)
    async with TestClient(TestServer(app)) as client:
        # not ready before the learner wrote anything; liveness is fine
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        response = await client.get("/users/u/recommendations")
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "not_ready"

        await asyncio.to_thread(stream.feed, 150)
        for _ in range(100):  # the background refresh picks the store up
            ready = await (await client.get("/readyz")).json()
            if ready.get("learner_interactions") == 150:
                break
            await asyncio.sleep(0.05)
        assert ready["learner_interactions"] == 150

        user = stream.events[0].user_id
        item = stream.events[0].item_id
        response = await client.get(f"/users/{user}/recommendations", params={"k": "5"})
        body = await response.json()
        assert response.status == 200 and body["kind"] == "personal" and len(body["items"]) == 5
        jsonschema.validate(body, _schema("/users/{user_id}/recommendations", "get", "200"))
        assert item not in {r["item_id"] for r in body["items"]}  # rated: excluded

        body = await (await client.get("/users/stranger/recommendations")).json()
        assert body["kind"] == "fallback" and body["fallback_reason"] == "unknown_user"

        response = await client.get(f"/items/{item}/similar", params={"k": "3"})
        body = await response.json()
        assert response.status == 200 and len(body["items"]) == 3
        assert item not in {r["item_id"] for r in body["items"]}
        jsonschema.validate(body, _schema("/items/{item_id}/similar", "get", "200"))

        response = await client.post("/predict", json={"user_id": user, "item_id": item})
        body = await response.json()
        assert response.status == 200 and 1.0 <= body["predicted_rating"] <= 5.0
        jsonschema.validate(body, _schema("/predict", "post", "200"))

        for side, entity in (("users", user), ("items", item)):
            response = await client.get(f"/{side}/{entity}/profile")
            body = await response.json()
            assert response.status == 200 and body["interactions"] >= 1 and body["keywords"]
            path = f"/{side}/{{{side[:-1]}_id}}/profile"
            jsonschema.validate(body, _schema(path, "get", "200"))

        # bad requests: clear 4xx, JSON error bodies
        bad = [
            (client.get(f"/users/{user}/recommendations", params={"k": "0"}), 400, "bad_k"),
            (client.get(f"/users/{user}/recommendations", params={"k": "x"}), 400, "bad_k"),
            (client.get(f"/users/{user}/recommendations", params={"k": "101"}), 400, "bad_k"),
            (client.get("/items/no-such-item/similar"), 404, "unknown_item"),
            (client.get("/users/no-such-user/profile"), 404, "unknown_user"),
            (client.post("/predict", data=b"{not json"), 400, "bad_json"),
            (client.post("/predict", json={"user_id": user}), 400, "bad_body"),
            (client.post("/predict", json=[1, 2]), 400, "bad_body"),
            (client.post("/predict", json={"user_id": user, "item_id": "zz"}), 404, "unknown_item"),
            (client.post("/predict", json={"user_id": "zz", "item_id": item}), 404, "unknown_user"),
            (client.get("/nowhere"), 404, "not_found"),
            (client.post("/healthz"), 405, "method_not_allowed"),
        ]
        for call, status, code in bad:
            response = await call
            assert response.status == status, (status, code)
            assert (await response.json())["error"]["code"] == code

        # every route is described in the OpenAPI document, and nothing else
        described = set(spec(feedback=False)["paths"])  # a server without --feedback
        routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
        assert described == routes
        assert (await (await client.get("/openapi.json")).json()) == spec(feedback=False)

        text = await (await client.get("/metrics")).text()
        line = 'drex_http_requests_total{endpoint="/items/{item_id}/similar",status="404"}'
        assert line in text
        assert 'drex_recommendations_total{kind="fallback"}' in text
        assert "drex_serving_ready 1.0" in text


def test_the_replica_answers_from_the_index_the_stream_publishes(
    stream: Stream, replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One FAISS index: the worker's. The replica loads each published snapshot (here
    inverted lists the worker trained once the catalogue passed the threshold), brings
    the items changed after it up to date, and never trains or builds one itself."""
    import drex_store.index
    from streams.agents import index as index_agent

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the replica trained an index")

    stream.feed(60)
    assert replica.refresh() and replica.index_batch == 1
    assert type(replica.index) is drex_store.index.ItemIndex
    monkeypatch.setattr(index_agent, "IVF_MIN_ITEMS", len(stream.session.learner.items) + 1)
    stream.feed(60)  # new items: the worker trains inverted lists and publishes them
    assert isinstance(stream.session.feeder.index, drex_store.index.IVFItemIndex)
    monkeypatch.setattr(drex_store.index.IVFItemIndex, "__init__", no_training)
    assert replica.refresh()
    assert isinstance(replica.index, drex_store.index.IVFItemIndex)
    assert replica.index_batch == 2
    assert set(replica.index.ids()) == set(stream.session.learner.items.ids)
    indexed = replica.index.ids()
    rows = replica.label_rows[replica.index.labels(indexed)]
    assert rows.tolist() == [replica.items.index[i] for i in indexed]
    user = next(iter(replica.users.index))
    assert replica.recommend(user, k=5).kind == "personal"


@pytest.mark.parametrize(
    "stream", [(), ("keyword_decay=0.7",)], indirect=True, ids=["no-decay", "decaying-users"]
)
def test_the_server_recommends_what_the_learner_ranks(stream: Stream, replica: Replica) -> None:
    """Serve what was evaluated: for the same state (two micro-batches, no optimiser step
    yet, so every stored representation is the learner's current one) the server's top-k
    is ``DReXLearner.rank``'s: the same items in the same order, the same predicted
    ratings and the same reasons (keywords, aspects, opinions, cautions, quote), though
    the replica keeps only each profile's heaviest words and follows the vocabulary
    through change records. The catalogue is small enough for the candidates (FAISS
    neighbours, the average user's top, the most rated) to hold every item."""
    stream.feed(60)
    assert replica.refresh()
    stream.feed(60)  # the second batch's words and quotes reach the replica incrementally
    assert replica.refresh()
    learner = stream.session.learner
    assert len(replica.items) <= replica.candidates
    assert replica.vocabulary.words == learner.vocabulary.words
    assert replica.vocabulary.mass == learner.vocabulary.mass
    quoted = cautioned = 0
    for user in list(learner.users.ids)[:20]:
        want = learner.rank(user, k=10)
        got = replica.recommend(user, k=10).items
        assert [r.item_id for r in got] == [r.item for r in want], user
        assert [r.predicted_rating for r in got] == pytest.approx(
            [r.rating for r in want], abs=1e-4
        )
        for served, ranked in zip(got, want, strict=True):
            reason = ranked.reason
            assert served.explanation == reason.keywords, (user, served.item_id)
            assert (served.aspects, served.opinions) == (reason.aspects, reason.opinions)
            assert served.cautions == reason.cautions
            quote = None if reason.quote is None else (reason.quote.text, reason.quote.rating)
            shown = None if served.quote is None else (served.quote.text, served.quote.rating)
            assert shown == quote, (user, served.item_id)
            quoted += quote is not None
            cautioned += bool(reason.cautions)
        # a pair's prediction is explained by the same rule
        item = want[0].item
        assert replica.predict(user, item).explanation == learner.explain(user, [item])[0].keywords
    assert quoted and cautioned  # the comparison covered quotes and cautions


# --- guards: the API key, clients that leave mid-request -------------------------------

KEY = "s3cret-key"


def _requests(endpoint: str, status: int) -> float:
    from prometheus_client import REGISTRY

    labels = {"endpoint": endpoint, "status": str(status)}
    return REGISTRY.get_sample_value("drex_http_requests_total", labels) or 0.0


@pytest.fixture
def empty_replica(tmp_path: Path) -> Iterator[Replica]:
    """A replica of a store the worker has not written yet: never ready."""
    r = Replica(tmp_path / "no-learner-yet")
    yield r
    r.close()


@pytest.mark.asyncio
async def test_the_api_key_is_required_everywhere_but_the_probes(empty_replica: Replica) -> None:
    from serving.openapi import PUBLIC_PATHS

    app = build_app(empty_replica, api_key=KEY)
    async with TestClient(TestServer(app)) as client:
        protected = [
            ("get", "/users/u/recommendations"),
            ("get", "/users/u/profile"),
            ("get", "/items/i/similar"),
            ("get", "/items/i/profile"),
            ("post", "/predict"),
            ("get", "/nowhere"),  # no route: 401 too, not a map of the routes
        ]
        wrong = [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": f"Bearer {KEY}x"},
            {"X-API-Key": KEY[:-1]},
        ]
        for method, path in protected:
            for headers in wrong:
                response = await client.request(method, path, headers=headers)
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                body = await response.json()
                assert body["error"]["code"] == "unauthorized", path
                jsonschema.validate(body, _schema("/predict", "post", "401", api_key=True))
            for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
                # past the key: the replica's own answer (not ready, no route)
                body = {"user_id": "u", "item_id": "i"}
                response = await client.request(method, path, headers=headers, json=body)
                assert response.status == (404 if path == "/nowhere" else 503), path
        # a key that is not even UTF-8 is a wrong key, not a server error
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(b"GET /users/u/profile HTTP/1.1\r\nHost: drex\r\nX-API-Key: \xff\xfe\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 401 ")
        writer.close()
        for path in sorted(PUBLIC_PATHS):  # probes and the document need no key
            assert (await client.get(path)).status in (200, 503), path
        assert (await client.get("/healthz")).status == 200
        assert _requests("/users/{user_id}/recommendations", 401) >= len(wrong)

        # the document says so: security on every operation but the public ones
        document = await (await client.get("/openapi.json")).json()
        assert document == spec(api_key=True, feedback=False)
        assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        secured = {
            path
            for path, operations in document["paths"].items()
            for operation in operations.values()
            if operation.get("security")
        }
        routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
        assert secured == routes - PUBLIC_PATHS and secured
    # without a key the document has no security, as before
    assert "securitySchemes" not in spec()["components"] and all(
        "security" not in op for ops in spec()["paths"].values() for op in ops.values()
    )


class _ReadyReplica(Replica):
    """Claims to be ready: a request gets as far as reading its body."""

    @property
    def ready(self) -> bool:
        return True


@pytest.mark.asyncio
async def test_a_client_that_leaves_mid_body_is_not_a_server_error(tmp_path: Path) -> None:
    """Counted as 499 (client closed request), not as a 500 with a logged traceback.

    Served as ``drex serve`` serves (web.run_app's runner: a handler is not cancelled
    when its client leaves; aiohttp's TestServer would cancel it)."""
    from aiohttp import web

    from serving.server import server_options

    replica = _ReadyReplica(tmp_path / "learner")
    runner = web.AppRunner(build_app(replica, refresh_interval=60), **server_options(5.0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    before = {status: _requests("/predict", status) for status in (499, 500)}
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: drex\r\nContent-Type: application/json\r\n"
            b'Content-Length: 200\r\n\r\n{"user_id": "u'
        )
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()  # half a body, then gone
        await writer.wait_closed()
        for _ in range(100):
            if _requests("/predict", 499) > before[499]:
                break
            await asyncio.sleep(0.02)
        assert _requests("/predict", 499) == before[499] + 1
        assert _requests("/predict", 500) == before[500]
    finally:
        await runner.cleanup()
        replica.close()


# --- the API's contract: what the document says is what the server does ----------------


def test_pages_are_slices_of_one_ranking_and_exclusions_are_left_out(
    stream: Stream, replica: Replica
) -> None:
    stream.feed(150)
    replica.refresh()
    user = next(iter(replica.users.index))
    full = [r.item_id for r in replica.recommend(user, k=12).items]
    assert len(full) == 12
    page = replica.recommend(user, k=5, offset=5)
    assert page.offset == 5 and [r.item_id for r in page.items] == full[5:10]
    gone = {full[0], full[3]}
    kept = [r.item_id for r in replica.recommend(user, k=10, exclude=gone).items]
    assert kept == [i for i in full if i not in gone][:10]
    # a fallback pages and excludes the same way
    popular = [r.item_id for r in replica.recommend("nobody", k=8).items]
    assert [r.item_id for r in replica.recommend("nobody", k=3, offset=2).items] == popular[2:5]
    cold = replica.recommend("nobody", k=6, exclude={popular[1]})
    assert [r.item_id for r in cold.items] == [i for i in popular if i != popular[1]][:6]


@pytest.mark.asyncio
async def test_the_http_api_validates_with_the_models_it_describes(
    stream: Stream, replica: Replica
) -> None:
    await asyncio.to_thread(stream.feed, 150)
    replica.refresh()
    document = spec()
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == sum(len(ops) for ops in document["paths"].values())
    path_ids = [
        p["schema"]
        for ops in document["paths"].values()
        for op in ops.values()
        for p in op.get("parameters", [])
        if p["in"] == "path"
    ]
    assert path_ids and all(s["type"] == "string" and s["minLength"] == 1 for s in path_ids)

    user = next(iter(replica.users.index))
    recs = f"/users/{user}/recommendations"
    async with TestClient(TestServer(build_app(replica, refresh_interval=60))) as client:
        full = await (await client.get(recs, params={"k": "10"})).json()
        ranked = [r["item_id"] for r in full["items"]]
        # exclude: repeated and comma-separated; offset: the next page of one ranking
        query = [("exclude", f"{ranked[0]},{ranked[1]}"), ("exclude", ranked[2]), ("k", "4")]
        body = await (await client.get(recs, params=query)).json()
        assert [r["item_id"] for r in body["items"]] == ranked[3:7]
        body = await (await client.get(recs, params={"k": "4", "offset": "4"})).json()
        assert body["offset"] == 4 and [r["item_id"] for r in body["items"]] == ranked[4:8]
        jsonschema.validate(body, _schema("/users/{user_id}/recommendations", "get", "200"))
        item = ranked[0]
        near = await (await client.get(f"/items/{item}/similar", params={"k": "6"})).json()
        body = await (await client.get(f"/items/{item}/similar", params={"offset": 2})).json()
        assert body["items"][:4] == near["items"][2:6]

        bad = [
            ("get", recs, {"kk": "3"}, None, "unknown_parameter", "'kk'"),
            ("get", "/healthz", {"verbose": "1"}, None, "unknown_parameter", "'verbose'"),
            ("get", f"/users/{user}/profile", {"offset": "1"}, None, "unknown_parameter", ""),
            ("get", recs, [("k", "3"), ("k", "4")], None, "bad_k", "2 times"),
            ("get", recs, {"offset": "-1"}, None, "bad_offset", ""),
            ("get", recs, {"offset": "1001"}, None, "bad_offset", ""),
            ("get", recs, {"include_seen": "maybe"}, None, "bad_include_seen", ""),
            ("get", f"/users/{'u' * 257}/profile", {}, None, "bad_user_id", "256"),
            ("post", "/predict", {}, {"user_id": user, "item_id": ""}, "bad_body", "item_id"),
            ("post", "/predict", {}, {"user_id": 5, "item_id": item}, "bad_body", "user_id"),
            ("post", "/predict", {}, {"user_id": user, "item_id": item, "x": 1}, "bad_body", "x"),
        ]
        for method, path, params, json, code, says in bad:
            response = await client.request(method, path, params=params, json=json)
            error = (await response.json())["error"]
            assert (response.status, error["code"]) == (400, code), (path, params, error)
            assert says in error["message"]
            jsonschema.validate(await response.json(), _schema("/predict", "post", "400"))

        # a wrong method: 405 with the methods the path takes (RFC 9110 requires Allow)
        for method, path in (("post", recs), ("delete", "/healthz"), ("get", "/predict")):
            response = await client.request(method, path)
            assert response.status == 405, path
            assert (await response.json())["error"]["code"] == "method_not_allowed"
            allowed = {m.strip() for m in response.headers["Allow"].split(",")}
            assert allowed & {"GET", "POST"} and method.upper() not in allowed


@pytest.mark.asyncio
async def test_a_store_the_worker_opened_but_learned_nothing_into_is_served_empty(
    stream: Stream, replica: Replica
) -> None:
    """Ready means serving what the store holds, nothing included: a worker that has
    started but learned no batch yet (or an empty topic) does not keep servers at 503."""
    await asyncio.to_thread(stream.session.acquire)  # creates the store; no batch yet
    assert stream.session.store.dense() is None
    app = build_app(replica, refresh_interval=0.05)
    async with TestClient(TestServer(app)) as client:
        for _ in range(100):
            response = await client.get("/readyz")
            if response.status == 200:
                break
            await asyncio.sleep(0.05)
        ready = await response.json()
        assert response.status == 200, ready
        assert ready["users"] == ready["items"] == ready["learner_interactions"] == 0
        assert ready["staleness_seconds"] is None
        response = await client.get("/users/u/recommendations", params={"offset": "3"})
        body = await response.json()
        assert response.status == 200 and body["kind"] == "fallback" and body["items"] == []
        jsonschema.validate(body, _schema("/users/{user_id}/recommendations", "get", "200"))
        for method, path, json, code in (
            ("post", "/predict", {"user_id": "u", "item_id": "i"}, "unknown_user"),
            ("get", "/items/i/similar", None, "unknown_item"),
            ("get", "/users/u/profile", None, "unknown_user"),
            ("get", "/items/i/profile", None, "unknown_item"),
        ):
            response = await client.request(method, path, json=json)
            assert response.status == 404, path
            assert (await response.json())["error"]["code"] == code
        # the first batch brings the model
        await asyncio.to_thread(stream.feed, 60)
        for _ in range(100):
            ready = await (await client.get("/readyz")).json()
            if ready["learner_interactions"] == 60:
                break
            await asyncio.sleep(0.05)
        assert ready["learner_interactions"] == 60 and ready["items"] > 0
        body = await (await client.get(f"/users/{stream.events[0].user_id}/recommendations")).json()
        assert body["kind"] == "personal" and body["items"]


def test_a_missing_store_is_logged_with_its_path_until_it_appears(
    stream: Stream, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    expected = str(stream.settings.learner_path)
    with caplog.at_level("WARNING", logger="serving.replica"):
        replica.refresh()
        replica.refresh()  # within the interval: said once
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and expected in said[0] and "no learner store" in said[0]
        replica.missing_log_every = 0.0
        replica.refresh()
        assert len(caplog.records) == 2  # and again, periodically
        stream.feed(60)
        caplog.clear()
        assert replica.refresh() and replica.ready
        assert not [r for r in caplog.records if "no learner store" in r.getMessage()]


@pytest.mark.asyncio
async def test_the_longest_request_the_document_allows_is_read_and_a_longer_one_is_a_400(
    stream: Stream, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp import ClientSession, web

    from serving.schemas import MAX_EXCLUDE, MAX_ID
    from serving.server import server_options

    stream.feed(60)
    replica.refresh()
    app = build_app(replica, refresh_interval=60)
    longest_id = "\U0001f600" * MAX_ID  # 4 bytes in UTF-8, 12 once percent-encoded
    params = [("exclude", longest_id)] * MAX_EXCLUDE + [("k", "100"), ("offset", "1000")]
    # served as drex serve serves it (TestServer does not take the server's options)
    runner = web.AppRunner(app, **server_options(5.0))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with ClientSession(base_url=url) as client:
        response = await client.get(f"/users/{longest_id}/recommendations", params=params)
        assert response.status == 200, await response.text()
        response = await client.get(
            f"/users/{longest_id}/recommendations", params=[*params, ("exclude", longest_id)]
        )
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_exclude"
        with caplog.at_level("DEBUG", logger="serving.http"):
            too_long = [("exclude", longest_id)] * (3 * MAX_EXCLUDE)
            response = await client.get("/users/u/recommendations", params=too_long)
            assert response.status == 400  # aiohttp's parser: the line is too long
        said = [r for r in caplog.records if r.name == "serving.http"]
        assert said and all(r.levelname == "WARNING" and not r.exc_info for r in said)
        assert "malformed request" in said[0].getMessage()
    await runner.cleanup()


def _with_category(event: InteractionEvent, category: str) -> InteractionEvent:
    return InteractionEvent(**{**event.asdict(), "categories": [category]})


@pytest.mark.asyncio
async def test_recommendations_of_a_category_rank_every_item_of_it_as_the_learner_does(
    stream: Stream, replica: Replica
) -> None:
    """Categories travel on the events into the store (``g:`` rows, named in the change
    records); the replica follows them, and ``?category=`` ranks the category's items
    exactly, as the full ranking orders them."""

    def category(item: str) -> str:
        return f"c{int(item.lstrip('i')) % 3}"

    stream.events = [_with_category(e, category(e.item_id)) for e in stream.events]
    await asyncio.to_thread(stream.feed, 150)
    replica.refresh()
    assert replica.categories.of and all(
        names == (category(item),) for item, names in replica.categories.of.items()
    )
    user = next(iter(replica.users.index))
    seen = replica.users.seen[user]
    ids, scores = replica.exact_scores(user)
    ranked = [ids[j] for j in np.argsort(-scores, kind="stable")]
    expected = [i for i in ranked if category(i) == "c1" and i not in seen][:5]
    got = replica.recommend(user, k=5, category="c1")
    assert [r.item_id for r in got.items] == expected
    cold = replica.recommend("nobody", k=5, category="c2")
    assert cold.items and all(category(r.item_id) == "c2" for r in cold.items)
    assert replica.recommend(user, category="no such category").items == []

    # an item given other categories later leaves its old one once the replica follows
    moved = next(i for i in expected)
    later = [
        _with_category(e, "c9") if e.item_id == moved else e
        for e in stream.events[stream.offset : stream.offset + 40]
    ]
    stream.events[stream.offset : stream.offset + 40] = later
    if all(e.item_id != moved for e in later):
        stream.events[stream.offset] = InteractionEvent(
            **{**later[0].asdict(), "item_id": moved, "categories": ["c9"]}
        )
    await asyncio.to_thread(stream.feed, 40)
    replica.refresh()
    assert replica.categories.of[moved] == ("c9",)
    assert moved not in {r.item_id for r in replica.recommend(user, k=50, category="c1").items}

    recs = f"/users/{user}/recommendations"
    async with TestClient(TestServer(build_app(replica, refresh_interval=60))) as client:
        response = await client.get(recs, params={"k": "5", "category": "c0"})
        body = await response.json()
        assert response.status == 200 and body["items"]
        assert all(category(r["item_id"]) == "c0" for r in body["items"])
