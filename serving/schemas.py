"""The HTTP API's data: query parameters, request bodies and answers, as pydantic models.

One definition serves twice: the server validates every request with these models
(serving/server.py) and serialises every JSON answer through them, and the OpenAPI
document (serving/openapi.py) takes its schemas from their ``model_json_schema``, so the
description cannot drift from what the server accepts and sends. The replica builds the
answers' items itself (:class:`Ranked`, :class:`Recommendations`).

Query parameters are strings on the wire: :func:`parse_query` gives each model field its
values (a list field takes repeated values), and a parameter the model does not name is
an error (400 ``unknown_parameter``), not ignored.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from multidict import MultiMapping
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from drex_model.reasons import Reason

MAX_K: Final = 100
MAX_OFFSET: Final = 1000  # deeper pages would rank ever more candidates for one request
MAX_ID: Final = 256  # characters of a user or item id (POST /feedback's limit too)
MAX_EXCLUDE: Final = 50  # exclude values per request
# The longest request line the server reads (aiohttp's default is 8,190 bytes): every
# request the document allows fits, its longest part being MAX_EXCLUDE ids of MAX_ID
# characters, each up to 12 bytes once percent-encoded (a 4-byte UTF-8 character).
MAX_REQUEST_LINE: Final = 256 * 1024


class RequestError(ValueError):
    """A request the models reject: 400 with ``code`` (``bad_<field>``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# --- query parameters ---------------------------------------------------------------------


class Query(BaseModel):
    """No query parameters; the base of every operation's query model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KQuery(Query):
    k: int = Field(10, ge=1, le=MAX_K, description="how many entries to answer")


class PageQuery(KQuery):
    offset: int = Field(
        0,
        ge=0,
        le=MAX_OFFSET,
        description="entries of the ranking to skip: offset=10 with k=10 is the second "
        "page (the ranks 11..20 of k=20)",
    )


class RecommendationsQuery(PageQuery):
    include_seen: bool = Field(False, description="keep the items the user interacted with")
    exclude: list[Annotated[str, StringConstraints(max_length=MAX_ID)]] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="item ids not to recommend: repeated (exclude=a&exclude=b), or "
        "comma-separated within a value (exclude=a,b)",
    )
    # a query parameter is absent or a string: no null in its schema
    category: Annotated[
        str | None,
        StringConstraints(min_length=1, max_length=MAX_ID),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ID}),
    ] = Field(
        None,
        description="only items of this category (as the events' categories name it); "
        "every item of the category is ranked",
    )

    @property
    def excluded(self) -> frozenset[str]:
        """The ids of ``exclude``, comma-separated values split."""
        return frozenset(i for value in self.exclude for i in value.split(",") if i)


def _is_list(model: type[Query], name: str) -> bool:
    return typing.get_origin(model.model_fields[name].annotation) is list


def parse_query(model: type[Query], query: MultiMapping[str]) -> Query:
    """``model`` from a request's query string; :class:`RequestError` names the first
    parameter that is unknown, given twice or invalid."""
    values: dict[str, Any] = {}
    for name in dict.fromkeys(query):  # each name once, in order
        given = query.getall(name)
        if name not in model.model_fields:
            raise RequestError("unknown_parameter", f"unknown query parameter {name!r}")
        if _is_list(model, name):
            values[name] = given
        elif len(given) > 1:
            raise RequestError(f"bad_{name}", f"{name} given {len(given)} times")
        else:
            values[name] = given[0]
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "query"
        raw = values.get(name)
        raise RequestError(f"bad_{name}", f"{name}: {first['msg']}, got {raw!r}") from None


# --- path parameters and bodies -----------------------------------------------------------


class Ids(BaseModel):
    """The ids in paths and bodies: non-empty strings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID, description="the user's id")
    item_id: str = Field(min_length=1, max_length=MAX_ID, description="the item's id")


def check_path(params: Mapping[str, str]) -> None:
    """A request's path parameters by :class:`Ids`' constraints (:class:`RequestError`
    ``bad_<name>``): the router takes any non-empty segment."""
    probe = Ids.model_construct(user_id="", item_id="")
    for name, value in params.items():
        try:
            Ids.__pydantic_validator__.validate_assignment(probe, name, value)
        except ValidationError as err:
            message = err.errors()[0]["msg"]
            raise RequestError(f"bad_{name}", f"{name}: {message}") from None


class PredictRequest(Ids):
    """A (user, item) pair to predict and explain."""


# --- answers --------------------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class ShownQuote(Answer):
    """A sentence of one of the item's positive reviews, and that review's rating."""

    text: str
    rating: float


class Ranked(Answer):
    """One recommended (or predicted) item, and why (``drex_model.reasons.Reason``)."""

    item_id: str
    predicted_rating: float = Field(description="clipped to the rating scale")
    score: float = Field(
        description="what the list is ordered by: the unclipped rating plus the exposure "
        "prior (personal), or the item's number of ratings (fallback)"
    )
    explanation: list[str] = Field(
        description="keywords, strongest first: the item's words this user is most likely "
        "to write about it (distinctive for the item and the user, never negative); for a "
        "fallback or a user without reviews, the item's own distinctive words"
    )
    aspects: list[str] = Field(description='the keywords that name a thing ("tone")')
    opinions: list[str] = Field(description='the other keywords ("sturdy", "love")')
    cautions: list[str] = Field(
        description="the item's distinctive negative words (negative in the VADER lexicon, "
        "or in reviews rated below the mean)"
    )
    quote: ShownQuote | None = Field(
        description="a sentence of one of the item's positive reviews that holds most "
        "keywords, with that review's rating; null when no sentence holds one"
    )

    @classmethod
    def of(cls, item_id: str, rating: float, score: float, reason: Reason) -> Ranked:
        quote = reason.quote
        return cls(
            item_id=item_id,
            predicted_rating=rating,
            score=score,
            explanation=reason.keywords,
            aspects=reason.aspects,
            opinions=reason.opinions,
            cautions=reason.cautions,
            quote=None if quote is None else ShownQuote(text=quote.text, rating=quote.rating),
        )


class Recommendations(Answer):
    """A user's top-k, personal or (an unknown user) the most-rated items."""

    user_id: str
    kind: Literal["personal", "fallback"]
    fallback_reason: Literal["unknown_user"] | None = Field(
        description="why a fallback; null for a personal list"
    )
    offset: int = Field(0, description="entries of the ranking skipped before the first")
    items: list[Ranked]


class Prediction(Ranked):
    """The predicted rating of a (user, item) pair and the pair's reason."""

    user_id: str


class Neighbour(Answer):
    item_id: str
    score: float = Field(description="inner product of the representations")


class Similar(Answer):
    """An item's nearest items by representation, nearest first, itself left out."""

    item_id: str
    offset: int = 0
    items: list[Neighbour]


class Keyword(Answer):
    word: str
    weight: float = Field(
        description="the reviews that hold the word (decayed for users), or its summed "
        "attention when the model keeps attention profiles (DReXConfig.keyword_attention)"
    )


class _Profile(Answer):
    interactions: int
    ratings: int
    mean_rating: float | None
    updated_at: float = Field(description="Unix time of the last change")
    keywords: list[Keyword] = Field(description="the heaviest words, heaviest first")


class UserProfile(_Profile):
    user_id: str


class ItemProfile(_Profile):
    item_id: str


class Health(Answer):
    status: Literal["ok"]


class Ready(Answer):
    """The replica serves what the learner store holds (an empty store included)."""

    status: Literal["ready"]
    users: int
    items: int
    learner_batches: int = Field(description="micro-batches the replica has applied")
    learner_interactions: int
    staleness_seconds: float | None = Field(
        description="age of the newest learner batch applied; null for an empty store"
    )


class NotReadyAnswer(Answer):
    status: Literal["not_ready"]
    reason: str


class ErrorDetail(Answer):
    code: str = Field(description="stable, machine-readable: bad_k, unknown_user, ...")
    message: str


class Error(Answer):
    error: ErrorDetail


def error(code: str, message: str) -> Error:
    return Error(error=ErrorDetail(code=code, message=message))


def dump(answer: BaseModel) -> bytes:
    """JSON of an answer, through its model's serialiser."""
    return answer.__pydantic_serializer__.to_json(answer)


def field_schema(model: type[BaseModel], name: str) -> Mapping[str, Any]:
    """The JSON schema of one field of ``model`` (a query or path parameter)."""
    properties: dict[str, Any] = model.model_json_schema()["properties"]
    schema: dict[str, Any] = properties[name]
    return schema
