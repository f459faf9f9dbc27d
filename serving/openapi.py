"""The operations of ``drex serve`` and their OpenAPI 3.1 description (``/openapi.json``).

Generated, not written by hand: :data:`OPERATIONS` names each operation's query model,
request body and answers (serving/schemas.py), the server routes and validates by the
same table (``serving.server.build_app``), and :func:`spec` takes the schemas from the
models' ``model_json_schema``. A server with an API key (``DREX_API_KEY``) serves
``spec(api_key=True)``: the same document with its security schemes, and a 401 answer
on every operation but those of :data:`PUBLIC_PATHS`. docs/api.md is written from this
document by ``scripts/api_docs.py``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode as Mode

from serving import schemas
from serving.feedback import FeedbackAccepted, FeedbackBatch

# Answered without the API key: probes (an orchestrator's liveness and readiness checks,
# Prometheus' scrape) and this document. None of them says anything about a user or item.
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
FEEDBACK_PATH: Final = "/feedback"  # only on a server run with --feedback
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "the server's DREX_API_KEY"},
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "the server's DREX_API_KEY",
    },
}
_REF = "#/components/schemas/{model}"
TEXT: Final = "text"  # an answer that is not JSON (Prometheus' exposition format)

_BAD_QUERY = "an unknown query parameter (`unknown_parameter`), or a bad value (`bad_<name>`)"
_UNREADY = "the replica has not read the learner store yet (`not_ready`)"


@dataclass(frozen=True)
class Operation:
    """One route: what it takes and what it answers, by status."""

    operation_id: str
    method: str
    path: str
    summary: str
    # status -> (the answer's model, or TEXT, or None for no body; what it means)
    responses: dict[int, tuple[Any, str]]
    query: type[schemas.Query] = schemas.Query
    body: Any = None  # the request body's type (a model, or e.g. list[Model])
    description: str = ""
    tags: tuple[str, ...] = field(default=())

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def public(self) -> bool:
        return self.path in PUBLIC_PATHS


def _errors(*statuses: int) -> dict[int, tuple[Any, str]]:
    meaning = {
        400: _BAD_QUERY,
        404: "an unknown id (`unknown_user`, `unknown_item`)",
        503: _UNREADY,
    }
    return {s: (schemas.Error, meaning[s]) for s in statuses}


def _profile(side: str, model: type[schemas.Answer]) -> Operation:
    entity = side[:-1]
    return Operation(
        f"get{entity.title()}Profile",
        "get",
        f"/{side}/{{{entity}_id}}/profile",
        f"A {entity}'s top keywords and counts",
        {200: (model, "the profile"), **_errors(400, 404, 503)},
        query=schemas.KQuery,
        tags=(side,),
    )


OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "getRecommendations",
        "get",
        "/users/{user_id}/recommendations",
        "Top-k items for a user, with predicted ratings and reasons",
        {200: (schemas.Recommendations, "recommendations (or a flagged fallback)")}
        | _errors(400, 503),
        query=schemas.RecommendationsQuery,
        description="Items the user interacted with are left out unless include_seen is "
        "true, and so are the items of exclude. An unknown user gets the most-rated items "
        "(kind fallback, fallback_reason unknown_user); an empty store, an empty list.",
        tags=("users",),
    ),
    Operation(
        "getSimilarItems",
        "get",
        "/items/{item_id}/similar",
        "Nearest items by representation (FAISS inner product)",
        {200: (schemas.Similar, "neighbours, nearest first")} | _errors(400, 404, 503),
        query=schemas.PageQuery,
        tags=("items",),
    ),
    Operation(
        "predict",
        "post",
        "/predict",
        "Predicted rating and explanation of a (user, item) pair",
        {
            200: (schemas.Prediction, "the prediction"),
            400: (schemas.Error, "the body is not JSON (`bad_json`) or not a pair (`bad_body`)"),
            404: (schemas.Error, "unknown user or item (`unknown_user`, `unknown_item`)"),
            408: (schemas.Error, "the body did not arrive in time (`request_timeout`)"),
            503: (schemas.Error, _UNREADY),
        },
        body=schemas.PredictRequest,
        tags=("pairs",),
    ),
    Operation(
        "postFeedback",
        "post",
        FEEDBACK_PATH,
        "Publish reviews and ratings to the topics the worker learns from",
        {
            202: (FeedbackAccepted, "every event was acknowledged by the broker"),
            400: (
                schemas.Error,
                "the body is not JSON (`bad_json`), not a list of 1 to 1000 entries "
                "(`bad_body`), or an entry breaks the event contract (`invalid_event`)",
            ),
            408: (schemas.Error, "the body did not arrive in time (`request_timeout`)"),
            503: (
                schemas.Error,
                "the broker did not acknowledge the events (`broker_unavailable`): retry "
                "the same entries",
            ),
        },
        body=FeedbackBatch,
        description="Each entry is one interaction with a rating, a text or both; it "
        "becomes a review on 'reviews' and/or a rating on 'ratings' (docs/events.md), and "
        "the worker joins and learns it like any other event: the answer does not wait "
        "for the learning. A request is published whole or refused whole. Give "
        "event_time (or event_id) to make retries safe. Only on a server run with "
        "--feedback: elsewhere the path does not exist (404).",
        tags=("feedback",),
    ),
    _profile("users", schemas.UserProfile),
    _profile("items", schemas.ItemProfile),
    Operation(
        "getHealth",
        "get",
        "/healthz",
        "Liveness: 200 while the process answers",
        {200: (schemas.Health, "the process answers")} | _errors(400),
        tags=("probes",),
    ),
    Operation(
        "getReadiness",
        "get",
        "/readyz",
        "Readiness: 200 once the replica has read the learner store, even an empty one",
        {
            200: (schemas.Ready, "ready, with sizes and staleness"),
            503: (schemas.NotReadyAnswer, "no learner store to read yet"),
        }
        | _errors(400),
        tags=("probes",),
    ),
    Operation(
        "getMetrics",
        "get",
        "/metrics",
        "Prometheus metrics",
        {200: (TEXT, "text exposition format")} | _errors(400),
        tags=("probes",),
    ),
    Operation(
        "getOpenApi",
        "get",
        "/openapi.json",
        "This document",
        {200: (dict[str, Any], "OpenAPI 3.1")} | _errors(400),
        tags=("probes",),
    ),
)


def spec(api_key: bool = False, feedback: bool = True) -> dict[str, Any]:
    """The OpenAPI document of a server without an API key, or with one (``api_key``);
    without ``feedback`` (a server not run with ``--feedback``) ``POST /feedback`` is left
    out, as the server leaves out its route."""
    document = _document()
    if not feedback:
        del document["paths"][FEEDBACK_PATH]
        for name in ("FeedbackEntry", "FeedbackAccepted"):
            document["components"]["schemas"].pop(name, None)
    if api_key:
        document["components"]["securitySchemes"] = copy.deepcopy(_SECURITY_SCHEMES)
        for path, operations in document["paths"].items():
            if path in PUBLIC_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]  # either one
                operation["responses"]["401"] = _content(
                    {"$ref": _REF.format(model="Error")},
                    "no API key, or a wrong one (`unauthorized`)",
                )
    return document


def _schemas_of(types: list[tuple[Any, Mode]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """JSON schemas of ``types`` (each with its mode: "validation" for what the server
    reads, "serialization" for what it writes), referring to the shared definitions."""
    adapters = [(n, mode, TypeAdapter(t)) for n, (t, mode) in enumerate(types)]
    found, definitions = TypeAdapter.json_schemas(adapters, ref_template=_REF)
    return [found[(n, mode)] for n, mode, _ in adapters], definitions.get("$defs", {})


def _content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _parameter(model: type[BaseModel], name: str, where: str) -> dict[str, Any]:
    schema = dict(schemas.field_schema(model, name))
    description = schema.pop("description", "")
    schema.pop("title", None)
    if "default" in schema and schema["default"] is None:  # absent, not null, on the wire
        del schema["default"]
    parameter: dict[str, Any] = {"name": name, "in": where, "schema": schema}
    if where == "path":
        parameter["required"] = True
    if description:
        parameter["description"] = description
    if schema.get("type") == "array":
        parameter["style"], parameter["explode"] = "form", True
    return parameter


def _document() -> dict[str, Any]:
    # every schema in one pass, so that shared models are defined once
    wanted: list[tuple[Any, Mode]] = []
    for op in OPERATIONS:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        for model, _ in op.responses.values():
            if model not in (TEXT, None):
                wanted.append((model, "serialization"))
    found, definitions = _schemas_of(wanted)
    schema_of = iter(found)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
        if op.description:
            operation["description"] = op.description
        if op.tags:
            operation["tags"] = list(op.tags)
        parameters = [_parameter(schemas.Ids, p, "path") for p in op.path_params]
        parameters += [_parameter(op.query, q, "query") for q in op.query.model_fields]
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": next(schema_of)}},
            }
        responses: dict[str, Any] = {}
        for status, (model, description) in op.responses.items():
            if model is TEXT:
                content = {"text/plain": {"schema": {"type": "string"}}}
                responses[str(status)] = {"description": description, "content": content}
            elif model is None:
                responses[str(status)] = {"description": description}
            else:
                responses[str(status)] = _content(next(schema_of), description)
        operation["responses"] = responses
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "drex",
            "version": "1",
            "description": "Recommendations with predicted ratings and keyword explanations "
            "from the DReX streaming learner.",
        },
        "paths": paths,
        "components": {"schemas": definitions},
    }
