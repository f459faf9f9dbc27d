"""The HTTP API of ``drex serve``: recommendations, predictions, profiles, neighbours.

An aiohttp application over a :class:`serving.replica.Replica`. Queries are answered on
the event loop from memory (numpy and one FAISS search: about a millisecond); the
replica's refresh (RocksDB reads) runs in a thread every ``refresh_interval`` seconds and
holds the state alone only while it writes what it read.

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``, with 400 for a malformed
request, 401 without the API key (when the server has one), 404 for an unknown id (except
recommendations: an unknown user gets the popular items, flagged ``"kind": "fallback"``),
408 for a body that arrives too slowly, 503 until the replica has a model. The routes are
described in OpenAPI 3.1 at ``/openapi.json`` (serving/openapi.py).

Clients that misbehave are not server errors: one that disconnects before its request is
read is counted with status 499 (nginx's "client closed request"), not 500, and a slow
one is cut off after ``client_timeout`` seconds (:func:`server_options` for the headers,
the body read in :func:`predict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from drex_model.reasons import is_aspect
from serving import metrics
from serving.openapi import PUBLIC_PATHS, spec
from serving.replica import NotReady, Recommendations, Replica

logger = logging.getLogger(__name__)

MAX_K: Final = 100
REPLICA: Final = web.AppKey("replica", Replica)
REFRESH_INTERVAL: Final = web.AppKey("refresh_interval", float)
API_KEY: Final = web.AppKey("api_key", bytes)  # b"": no key required
CLIENT_TIMEOUT: Final = web.AppKey("client_timeout", float)
# not an HTTP status anyone receives: the client left before its request was read
CLIENT_CLOSED: Final = 499
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.close = close  # close the connection after this answer


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _k(request: web.Request, default: int = 10) -> int:
    raw = request.query.get("k", str(default))
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(400, "bad_k", f"k must be an integer, got {raw!r}") from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, "bad_k", f"k must be between 1 and {MAX_K}, got {k}")
    return k


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in {"true", "false", "1", "0"}:
        raise ApiError(400, f"bad_{name}", f"{name} must be true or false, got {raw!r}")
    return raw in {"true", "1"}


def _replica(request: web.Request) -> Replica:
    replica = request.app[REPLICA]
    if not replica.ready:
        raise ApiError(503, "not_ready", "the replica has not loaded the learner's state yet")
    return replica


def _recommendations(recs: Recommendations) -> dict[str, Any]:
    return {
        "user_id": recs.user_id,
        "kind": recs.kind,
        "fallback_reason": recs.reason,
        "items": recs.items,  # dataclasses: orjson serialises them natively
    }


# --- routes -------------------------------------------------------------------------------


async def recommendations(request: web.Request) -> web.Response:
    replica = _replica(request)
    k = _k(request)
    include_seen = _flag(request, "include_seen")
    recs = replica.recommend(request.match_info["user_id"], k, exclude_seen=not include_seen)
    return _json(_recommendations(recs))


async def similar(request: web.Request) -> web.Response:
    replica = _replica(request)
    item_id = request.match_info["item_id"]
    k = _k(request)
    try:
        hits = replica.similar(item_id, k)
    except KeyError as err:
        raise ApiError(404, "unknown_item", f"no item {item_id!r}") from err
    return _json({"item_id": item_id, "items": [{"item_id": i, "score": s} for i, s in hits]})


async def _body(request: web.Request) -> bytes:
    """The request body, or 408 when it takes longer than the client timeout to arrive."""
    try:
        async with asyncio.timeout(request.app[CLIENT_TIMEOUT]):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the body did not arrive within {request.app[CLIENT_TIMEOUT]:g} s",
            close=True,
        ) from None


async def predict(request: web.Request) -> web.Response:
    # the body first: a client that is slow or leaves mid-body is told (408) or counted
    # (499) as such whether or not the replica is ready
    raw = await _body(request)
    replica = _replica(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, "bad_json", f"the body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", "the body must be an object {user_id, item_id}")
    for field in ("user_id", "item_id"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise ApiError(400, "bad_body", f"{field} must be a non-empty string")
    user_id, item_id = body["user_id"], body["item_id"]
    try:
        ranked = replica.predict(user_id, item_id)
    except KeyError as err:
        what = "user" if user_id not in replica.users.index else "item"
        raise ApiError(404, f"unknown_{what}", str(err.args[0])) from err
    return _json(
        {
            "user_id": user_id,
            "item_id": item_id,
            "predicted_rating": ranked.predicted_rating,
            "score": ranked.score,
            "explanation": ranked.explanation,
            "aspects": ranked.aspects,
            "opinions": ranked.opinions,
            "cautions": ranked.cautions,
            "quote": ranked.quote,
        }
    )


def _profile_route(side: str) -> Handler:
    key = "user_id" if side == "users" else "item_id"

    async def profile(request: web.Request) -> web.Response:
        replica = _replica(request)
        entity = request.match_info[key]
        k = _k(request)
        try:
            p = replica.profile(side, entity, k)
        except KeyError as err:
            raise ApiError(404, f"unknown_{side[:-1]}", f"no {side[:-1]} {entity!r}") from err
        return _json(
            {
                key: p.id,
                "interactions": p.interactions,
                "ratings": p.ratings,
                "mean_rating": p.mean_rating,
                "updated_at": p.updated_at,
                "keywords": [{"word": w, "weight": x} for w, x in p.keywords],
            }
        )

    return profile


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    if not replica.ready:
        return _json({"status": "not_ready", "reason": "waiting for the learner's state"}, 503)
    return _json(
        {
            "status": "ready",
            "users": len(replica.users),
            "items": len(replica.items),
            "learner_batches": replica.batches,
            "learner_interactions": replica.applied,
            "staleness_seconds": time.time() - replica.learner_updated_at,
        }
    )


async def metrics_route(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(spec(api_key=bool(request.app[API_KEY])))


# --- the application ----------------------------------------------------------------------


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors for every failure, and latency/count metrics by route template."""
    started = time.perf_counter()
    endpoint = _endpoint(request)
    try:
        response = await handler(request)
    except ApiError as err:
        response = _json({"error": {"code": err.code, "message": err.message}}, err.status)
        response.headers.update(err.headers)
        if err.close:
            response.force_close()
    except ConnectionError:  # the client left mid-request: nobody reads this answer
        logger.debug("%s %s: the client disconnected", request.method, request.path)
        response = web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")
    except NotReady as err:
        response = _json({"error": {"code": "not_ready", "message": str(err)}}, 503)
    except web.HTTPException as err:  # aiohttp's own: 404 no route, 405 wrong method
        response = _json(
            {"error": {"code": err.reason.lower().replace(" ", "_"), "message": err.text}},
            err.status,
        )
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        response = _json({"error": {"code": "internal", "message": "internal error"}}, 500)
    metrics.REQUESTS.labels(endpoint, str(response.status)).inc()
    metrics.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
    return response


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 without the server's API key, but on :data:`serving.openapi.PUBLIC_PATHS`.

    The key may come as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; it is
    compared in constant time. An unknown path needs the key too (a 404 would tell a
    stranger which paths exist).
    """
    key = request.app[API_KEY]
    if not key or _endpoint(request) in PUBLIC_PATHS:
        return await handler(request)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else ""
    given = given or request.headers.get("X-API-Key", "")
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 that way
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key):
        raise ApiError(
            401,
            "unauthorized",
            "this server needs its API key: Authorization: Bearer <key>, or X-API-Key: <key>",
            {"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)


async def _refresh_forever(app: web.Application) -> None:
    replica, interval = app[REPLICA], app[REFRESH_INTERVAL]
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(None, replica.refresh)
        except Exception:  # a bad read is retried next time; the old state keeps serving
            logger.exception("replica refresh failed")
        await asyncio.sleep(interval)


async def _warm_up(app: web.Application) -> None:
    """Read the explanation rule's word lists (VADER's lexicon and lemminflect's tables,
    which ``is_aspect`` of a noun without valence loads: about 2 s) before serving, not
    in the first request that explains."""
    await asyncio.get_running_loop().run_in_executor(None, is_aspect, "tone")


async def _refresher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_refresh_forever(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_app(
    replica: Replica,
    refresh_interval: float = 0.5,
    api_key: str = "",
    client_timeout: float = 15.0,
) -> web.Application:
    """The application; it refreshes ``replica`` in the background while it runs.

    ``api_key``: required of every request but the public paths (empty: none).
    ``client_timeout``: seconds a request body may take to arrive; run the application
    with :func:`server_options` of the same value to bound the headers too.
    """
    # errors_and_metrics outermost: a 401 is a JSON error and is counted like the others
    app = web.Application(middlewares=[errors_and_metrics, api_key_middleware])
    app[REPLICA] = replica
    app[REFRESH_INTERVAL] = refresh_interval
    app[API_KEY] = api_key.encode()
    app[CLIENT_TIMEOUT] = client_timeout
    app.on_startup.append(_warm_up)
    app.cleanup_ctx.append(_refresher)
    app.add_routes(
        [
            web.get("/users/{user_id}/recommendations", recommendations),
            web.get("/users/{user_id}/profile", _profile_route("users")),
            web.get("/items/{item_id}/similar", similar),
            web.get("/items/{item_id}/profile", _profile_route("items")),
            web.post("/predict", predict),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_route),
            web.get("/openapi.json", openapi),
        ]
    )
    return app


def server_options(client_timeout: float) -> dict[str, Any]:
    """aiohttp server options (``web.run_app``, ``AppRunner``, ``TestServer``) that cut off
    a slow or idle client after ``client_timeout`` seconds.

    aiohttp's keep-alive timer runs from the connection's start and from each response
    until the next request's headers have all arrived, so it bounds a client that sends
    its headers slowly (or nothing) as well as an idle connection. ``lingering_time``
    bounds how long the rest of a body the handler did not read is drained.
    """
    return {"keepalive_timeout": client_timeout, "lingering_time": client_timeout}
