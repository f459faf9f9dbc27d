"""The OpenAPI 3.1 description of ``drex serve`` (served at ``/openapi.json``).

Written out here rather than generated, so that it says what clients may rely on;
tests/functional/test_serving.py checks that every route of the application is described
and that the responses match their schemas. A server with an API key (``DREX_API_KEY``)
serves ``spec(api_key=True)``: the same document with its security schemes, and a 401
answer on every operation but those of :data:`PUBLIC_PATHS`.
"""

from __future__ import annotations

import copy
from typing import Any, Final

# Answered without the API key: probes (an orchestrator's liveness and readiness checks,
# Prometheus' scrape) and this document. None of them says anything about a user or item.
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "the server's DREX_API_KEY"},
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "the server's DREX_API_KEY",
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_NUMBER = {"type": "number"}
_STRING = {"type": "string"}
_WORDS = {"type": "array", "items": _STRING}
# Why the item suits the user (drex_model/reasons.py): the fields of both a recommended
# item and a prediction.
_REASON_FIELDS = ("explanation", "aspects", "opinions", "cautions", "quote")
_REASON = {
    "explanation": {
        **_WORDS,
        "description": "keywords, strongest first: the item's words this user is most likely "
        "to write about it (distinctive for the item and the user, never negative); for "
        "a fallback or a user without reviews, the item's own distinctive words",
    },
    "aspects": {**_WORDS, "description": 'the keywords that name a thing ("tone")'},
    "opinions": {**_WORDS, "description": 'the other keywords ("sturdy", "love")'},
    "cautions": {
        **_WORDS,
        "description": "the item's distinctive negative words (negative in the VADER "
        "lexicon, or in reviews rated below the mean)",
    },
    "quote": {
        "description": "a sentence of one of the item's positive reviews that holds most "
        "keywords, with that review's rating; null when no sentence holds one",
        "oneOf": [
            {
                "type": "object",
                "required": ["text", "rating"],
                "properties": {"text": _STRING, "rating": _NUMBER},
            },
            {"type": "null"},
        ],
    },
}
_RANKED = {
    "type": "object",
    "required": ["item_id", "predicted_rating", "score", *_REASON_FIELDS],
    "properties": {
        "item_id": _STRING,
        "predicted_rating": {**_NUMBER, "description": "clipped to the rating scale"},
        "score": {
            **_NUMBER,
            "description": "what the list is ordered by: the unclipped rating plus the "
            "exposure prior (personal), or the item's number of ratings (fallback)",
        },
        **_REASON,
    },
}
_RECOMMENDATIONS = {
    "type": "object",
    "required": ["user_id", "kind", "fallback_reason", "items"],
    "properties": {
        "user_id": _STRING,
        "kind": {"enum": ["personal", "fallback"]},
        "fallback_reason": {"type": ["string", "null"], "enum": ["unknown_user", None]},
        "items": {"type": "array", "items": _RANKED},
    },
}
_SIMILAR = {
    "type": "object",
    "required": ["item_id", "items"],
    "properties": {
        "item_id": _STRING,
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["item_id", "score"],
                "properties": {
                    "item_id": _STRING,
                    "score": {**_NUMBER, "description": "inner product"},
                },
            },
        },
    },
}
_PREDICTION = {
    "type": "object",
    "required": ["user_id", "item_id", "predicted_rating", "score", *_REASON_FIELDS],
    "properties": {
        "user_id": _STRING,
        "item_id": _STRING,
        "predicted_rating": _NUMBER,
        "score": _NUMBER,
        **_REASON,
    },
}


def _profile(key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key, "interactions", "ratings", "mean_rating", "updated_at", "keywords"],
        "properties": {
            key: _STRING,
            "interactions": {"type": "integer"},
            "ratings": {"type": "integer"},
            "mean_rating": {"type": ["number", "null"]},
            "updated_at": {**_NUMBER, "description": "Unix time of the last change"},
            "keywords": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["word", "weight"],
                    "properties": {"word": _STRING, "weight": _NUMBER},
                },
            },
        },
    }


def _profile_path(entity: str, whose: str) -> dict[str, Any]:
    key = f"{entity}_id"
    return {
        "get": {
            "summary": f"{whose} top keywords and counts",
            "parameters": [_path_param(key), _K],
            "responses": {
                "200": _json(_profile(key), "the profile"),
                "400": _BAD,
                "404": _json(_ERROR, f"unknown {entity}"),
                "503": _UNREADY,
            },
        }
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_K = {
    "name": "k",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
_BAD = _json(_ERROR, "malformed request (bad k, bad body)")
_UNREADY = _json(_ERROR, "no model loaded yet")


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STRING}


def spec(api_key: bool = False) -> dict[str, Any]:
    """The OpenAPI document of a server without an API key, or with one (``api_key``)."""
    document = _document()
    if api_key:
        document["components"] = {"securitySchemes": copy.deepcopy(_SECURITY_SCHEMES)}
        for path, operations in document["paths"].items():
            if path in PUBLIC_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]  # either one
                operation["responses"]["401"] = _json(_ERROR, "no API key, or a wrong one")
    return document


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "drex",
            "version": "1",
            "description": "Recommendations with predicted ratings and keyword explanations "
            "from the DReX streaming learner.",
        },
        "paths": {
            "/users/{user_id}/recommendations": {
                "get": {
                    "summary": "Top-k items for a user, excluding rated ones by default",
                    "parameters": [
                        _path_param("user_id"),
                        _K,
                        {
                            "name": "include_seen",
                            "in": "query",
                            "schema": {"type": "boolean", "default": False},
                        },
                    ],
                    "responses": {
                        "200": _json(_RECOMMENDATIONS, "recommendations (or a flagged fallback)"),
                        "400": _BAD,
                        "503": _UNREADY,
                    },
                }
            },
            "/items/{item_id}/similar": {
                "get": {
                    "summary": "Nearest items by representation (FAISS)",
                    "parameters": [_path_param("item_id"), _K],
                    "responses": {
                        "200": _json(_SIMILAR, "neighbours, nearest first"),
                        "400": _BAD,
                        "404": _json(_ERROR, "unknown item"),
                        "503": _UNREADY,
                    },
                }
            },
            "/predict": {
                "post": {
                    "summary": "Predicted rating and explanation of a (user, item) pair",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["user_id", "item_id"],
                                    "properties": {"user_id": _STRING, "item_id": _STRING},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_PREDICTION, "the prediction"),
                        "400": _BAD,
                        "404": _json(_ERROR, "unknown user or item"),
                        "503": _UNREADY,
                    },
                }
            },
            "/users/{user_id}/profile": _profile_path("user", "A user's"),
            "/items/{item_id}/profile": _profile_path("item", "An item's"),
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "the process answers"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: 200 once the learner's state is loaded",
                    "responses": {
                        "200": {"description": "ready, with sizes and staleness"},
                        "503": {"description": "not ready yet"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
    }
