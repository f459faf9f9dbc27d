"""The HTTP API of ``drex serve``: recommendations, predictions, profiles, neighbours.

An aiohttp application over a :class:`serving.replica.Replica`. Queries are answered on
the event loop from memory (numpy and one FAISS search: about a millisecond); the
replica's refresh (RocksDB reads) runs in a thread every ``refresh_interval`` seconds and
holds the state alone only while it writes what it read.

The routes are serving/openapi.py's ``OPERATIONS``: each handler is bound to its
operation's models (serving/schemas.py), which parse its query string (an unknown
parameter is a 400, not ignored) and body and serialise its answer, and from which
``/openapi.json`` is generated; so the document says what the server does.

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``, with 400 for a malformed
request, 401 without the API key (when the server has one), 404 for an unknown id (except
recommendations: an unknown user gets the popular items, flagged ``"kind": "fallback"``),
405 with ``Allow`` for a wrong method, 408 for a body that arrives too slowly, 503 until
the replica has read the learner store.

Clients that misbehave are not server errors: one that disconnects before its request is
read is counted with status 499 (nginx's "client closed request"), not 500, and a slow
one is cut off after ``client_timeout`` seconds (:func:`server_options` for the headers,
:func:`_body` for the body)."""

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
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError

from drex_model.reasons import is_aspect
from serving import metrics, schemas
from serving.feedback import FeedbackEntry, FeedbackRefused, FeedbackSink
from serving.openapi import FEEDBACK_PATH, OPERATIONS, PUBLIC_PATHS, Operation, spec
from serving.replica import NotReady, Replica

logger = logging.getLogger(__name__)

REPLICA: Final = web.AppKey("replica", Replica)
REFRESH_INTERVAL: Final = web.AppKey("refresh_interval", float)
API_KEY: Final = web.AppKey("api_key", bytes)  # b"": no key required
CLIENT_TIMEOUT: Final = web.AppKey("client_timeout", float)
# publishes POST /feedback (streams/feedback.py); None: feedback is off
FEEDBACK: Final = web.AppKey[FeedbackSink | None]("feedback")
# not an HTTP status anyone receives: the client left before its request was read
CLIENT_CLOSED: Final = 499
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Answer = BaseModel | web.StreamResponse
# an operation's code: the request, its query (the operation's model) and its body (the
# operation's body type, None without one) -> its answer (a model is sent as JSON)
Route = Callable[[web.Request, Any, Any], Awaitable[Answer]]


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


def _answer(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=schemas.dump(model), status=status, content_type="application/json")


def _replica(request: web.Request) -> Replica:
    replica = request.app[REPLICA]
    if not replica.ready:
        raise ApiError(503, "not_ready", f"not ready: {replica.waiting}")
    return replica


# --- routes -------------------------------------------------------------------------------


async def recommendations(
    request: web.Request, query: schemas.RecommendationsQuery, body: None
) -> schemas.Recommendations:
    return _replica(request).recommend(
        request.match_info["user_id"],
        query.k,
        exclude_seen=not query.include_seen,
        offset=query.offset,
        exclude=query.excluded,
        category=query.category,
    )


async def similar(request: web.Request, query: schemas.PageQuery, body: None) -> schemas.Similar:
    replica = _replica(request)
    item_id = request.match_info["item_id"]
    try:
        hits = replica.similar(item_id, query.k + query.offset)[query.offset :]
    except KeyError as err:
        raise ApiError(404, "unknown_item", f"no item {item_id!r}") from err
    neighbours = [schemas.Neighbour(item_id=i, score=s) for i, s in hits]
    return schemas.Similar(item_id=item_id, offset=query.offset, items=neighbours)


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


async def feedback(request: web.Request, query: schemas.Query, body: list[FeedbackEntry]) -> Answer:
    sink = request.app[FEEDBACK]
    assert sink is not None  # the route exists only with a sink (build_app)
    try:
        return _answer(await sink(body), 202)
    except FeedbackRefused as err:
        raise ApiError(err.status, err.code, err.message) from None


async def predict(
    request: web.Request, query: schemas.Query, body: schemas.PredictRequest
) -> schemas.Prediction:
    replica = _replica(request)
    user_id, item_id = body.user_id, body.item_id
    try:
        ranked = replica.predict(user_id, item_id)
    except KeyError as err:
        what = "user" if user_id not in replica.users.index else "item"
        raise ApiError(404, f"unknown_{what}", str(err.args[0])) from err
    return schemas.Prediction(user_id=user_id, **dict(ranked))


def _profile_route(side: str) -> Route:
    key = "user_id" if side == "users" else "item_id"

    async def profile(request: web.Request, query: schemas.KQuery, body: None) -> BaseModel:
        replica = _replica(request)
        entity = request.match_info[key]
        try:
            return replica.profile(side, entity, query.k)
        except KeyError as err:
            raise ApiError(404, f"unknown_{side[:-1]}", f"no {side[:-1]} {entity!r}") from err

    return profile


async def healthz(request: web.Request, query: schemas.Query, body: None) -> schemas.Health:
    return schemas.Health(status="ok")


async def readyz(request: web.Request, query: schemas.Query, body: None) -> Answer:
    replica = request.app[REPLICA]
    if not replica.ready:
        return _answer(schemas.NotReadyAnswer(status="not_ready", reason=replica.waiting), 503)
    updated = replica.learner_updated_at
    return schemas.Ready(
        status="ready",
        users=len(replica.users),
        items=len(replica.items),
        learner_batches=max(replica.batches, 0),
        learner_interactions=replica.applied,
        staleness_seconds=time.time() - updated if updated else None,
    )


async def metrics_route(request: web.Request, query: schemas.Query, body: None) -> Answer:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request, query: schemas.Query, body: None) -> Answer:
    return _json(spec(api_key=bool(request.app[API_KEY]), feedback=bool(request.app[FEEDBACK])))


HANDLERS: Final[dict[str, Route]] = {
    "getRecommendations": recommendations,
    "getSimilarItems": similar,
    "predict": predict,
    "postFeedback": feedback,
    "getUserProfile": _profile_route("users"),
    "getItemProfile": _profile_route("items"),
    "getHealth": healthz,
    "getReadiness": readyz,
    "getMetrics": metrics_route,
    "getOpenApi": openapi,
}


def _bind(operation: Operation, route: Route) -> Handler:
    """``route`` behind its operation's models: the query parsed by the operation's query
    model, the body (read first: a slow client gets 408 whatever it sent) by its body
    type, and a model answered as JSON (the spec's schema is that model's)."""
    body_type = TypeAdapter(operation.body) if operation.body is not None else None

    async def handler(request: web.Request) -> web.StreamResponse:
        raw = await _body(request) if body_type is not None else b""
        schemas.check_path(request.match_info)
        query = schemas.parse_query(operation.query, request.query)
        body = None
        if body_type is not None:
            try:
                body = body_type.validate_json(raw)
            except ValidationError as err:
                first = err.errors()[0]
                if first["type"] == "json_invalid":
                    raise ApiError(
                        400, "bad_json", f"the body is not JSON: {first['msg']}"
                    ) from None
                where = ".".join(str(p) for p in first["loc"]) or "the body"
                raise ApiError(400, "bad_body", f"{where}: {first['msg']}") from None
        answer = await route(request, query, body)
        return _answer(answer) if isinstance(answer, BaseModel) else answer

    return handler


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
    except schemas.RequestError as err:
        response = _json({"error": {"code": err.code, "message": err.message}}, 400)
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
        if "Allow" in err.headers:  # a 405 says which methods the path takes (RFC 9110)
            response.headers["Allow"] = err.headers["Allow"]
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
    feedback: FeedbackSink | None = None,
) -> web.Application:
    """The application; it refreshes ``replica`` in the background while it runs.

    ``api_key``: required of every request but the public paths (empty: none).
    ``client_timeout``: seconds a request body may take to arrive; run the application
    with :func:`server_options` of the same value to bound the headers too.
    ``feedback``: publishes ``POST /feedback`` (None: no such route, nor in the document);
    its ``close()``, if it has one, runs at cleanup.
    """
    # errors_and_metrics outermost: a 401 is a JSON error and is counted like the others
    app = web.Application(middlewares=[errors_and_metrics, api_key_middleware])
    app[REPLICA] = replica
    app[REFRESH_INTERVAL] = refresh_interval
    app[API_KEY] = api_key.encode()
    app[CLIENT_TIMEOUT] = client_timeout
    app[FEEDBACK] = feedback
    if (close := getattr(feedback, "close", None)) is not None:
        app.on_cleanup.append(lambda _: close())
    app.on_startup.append(_warm_up)
    app.cleanup_ctx.append(_refresher)
    for operation in OPERATIONS:
        if operation.path == FEEDBACK_PATH and feedback is None:
            continue
        handler = _bind(operation, HANDLERS[operation.operation_id])
        app.router.add_route(operation.method.upper(), operation.path, handler)
    return app


class _ClientMistakes(logging.Filter):
    """aiohttp logs a request its HTTP parser rejects (a control character in a header,
    a line too long) as an ERROR with a traceback, though the client was wrong and was
    answered 400: one WARNING line instead, so that any client cannot fill the log with
    tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code == 400:
            record.msg = f"{record.getMessage()}: malformed request: {exc.message}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


HTTP_LOGGER: Final = logging.getLogger("serving.http")  # aiohttp's connection-level log
HTTP_LOGGER.addFilter(_ClientMistakes())


def server_options(client_timeout: float) -> dict[str, Any]:
    """aiohttp server options (``web.run_app``, ``AppRunner``, ``TestServer``) that cut off
    a slow or idle client after ``client_timeout`` seconds.

    aiohttp's keep-alive timer runs from the connection's start and from each response
    until the next request's headers have all arrived, so it bounds a client that sends
    its headers slowly (or nothing) as well as an idle connection. ``lingering_time``
    bounds how long the rest of a body the handler did not read is drained.
    ``max_line_size`` fits the longest request line the API's document allows
    (``schemas.MAX_REQUEST_LINE``); a longer one gets aiohttp's plain-text 400, logged as
    one line by :data:`HTTP_LOGGER`.
    """
    return {
        "keepalive_timeout": client_timeout,
        "lingering_time": client_timeout,
        "max_line_size": schemas.MAX_REQUEST_LINE,
        "logger": HTTP_LOGGER,
    }
