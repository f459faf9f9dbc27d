"""Load review/rating files into Interactions, filter them k-core style and split them.

Every evaluation, benchmark and replay starts here, so the loader is strict about what it
keeps and open about what it drops: a bad row never crashes a run, it is counted by reason
in ``LoadReport.skipped``, and ``LoadReport.summary()`` says how much of the file survived.

Formats (any of them may be gzip-compressed; detected from the magic bytes, not the name):

- ``amazon14`` / ``amazon18``: reviewerID, asin, overall, reviewText, unixReviewTime (s).
- ``amazon23``: user_id, parent_asin (else asin), rating, title + text, timestamp (ms).
- ``jsonl``: user, item and optional rating, text, timestamp (s).
- ``csv``: a header with user, item and optional rating, text, timestamp (s).

A row without a timestamp gets its 0-based row index instead, so a file without times
keeps its order as the stream order.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypedDict

import numpy as np
import orjson
from tqdm import tqdm

from drex_model.types import Interaction

FORMATS: Final = ("auto", "amazon14", "amazon18", "amazon23", "jsonl", "csv")

# Skip reasons are shared by every format so that reports from different files add up.
INVALID_JSON: Final = "invalid JSON"
NOT_AN_OBJECT: Final = "not a JSON object"
MALFORMED_CSV: Final = "malformed CSV row"
MISSING_USER: Final = "missing user id"
MISSING_ITEM: Final = "missing item id"
RATING_NOT_NUMBER: Final = "rating not a number"
TIMESTAMP_NOT_NUMBER: Final = "timestamp not a number"
NO_CONTENT: Final = "no rating and no text"


def rating_outside(rating_scale: int) -> str:
    """Skip reason for an out-of-range rating; it names the scale so the report is readable."""
    return f"rating outside 1..{rating_scale}"


@dataclass(frozen=True, slots=True)
class _Schema:
    """Where one format keeps each field of an Interaction."""

    user: str  # user id field
    item: tuple[str, ...]  # item id fields, first present wins (2023: parent_asin, asin)
    rating: str  # star rating field
    text: tuple[str, ...]  # text fields, non-empty ones joined by ". " (2023: title, text)
    timestamp: str  # event time field
    seconds_per_unit: float  # 1e-3 when the format stores milliseconds


_GENERIC = _Schema("user", ("item",), "rating", ("text",), "timestamp", 1.0)
_AMAZON_2014_2018 = _Schema(
    "reviewerID", ("asin",), "overall", ("reviewText",), "unixReviewTime", 1.0
)
_SCHEMAS: Final[dict[str, _Schema]] = {
    "amazon14": _AMAZON_2014_2018,
    "amazon18": _AMAZON_2014_2018,
    "amazon23": _Schema(
        "user_id", ("parent_asin", "asin"), "rating", ("title", "text"), "timestamp", 1e-3
    ),
    "jsonl": _GENERIC,
    "csv": _GENERIC,
}


@dataclass(slots=True)
class LoadReport:
    """What a load kept and what it dropped, so a run can say how much data it really used."""

    interactions: list[Interaction]  # kept rows, sorted by (timestamp, row order)
    rows: int  # non-blank lines (JSON) or records (CSV) read
    skipped: dict[str, int]  # reason -> rows dropped for it
    duplicates: int  # rows dropped because their (user, item) pair came earlier
    fmt: str = ""  # the format actually used, after auto-detection

    def summary(self) -> str:
        """One line for logs and reports: rows in, interactions out, and why the rest went."""
        n_skipped = sum(self.skipped.values())
        line = f"{self.rows} rows -> {len(self.interactions)} interactions; skipped {n_skipped}"
        if n_skipped:
            reasons = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
            line += f" ({reasons})"
        return f"{line}; duplicates {self.duplicates}"


def load_interactions(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    progress: bool = False,
    rating_scale: int = 5,
) -> LoadReport:
    """Read one file into Interactions sorted by (timestamp, row order).

    Bad rows are counted by reason in ``skipped`` rather than raised, because real dumps
    always hold a few; only a file-level problem (unknown format, a CSV without user/item
    columns) raises ``ValueError``. A repeated (user, item) pair keeps its earliest row:
    the Amazon 2018 files repeat one review across product variants, and counting it
    several times would leak the same rating into both train and test.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if rating_scale < 1:
        raise ValueError(f"rating_scale must be >= 1, got {rating_scale}")
    if fmt == "auto":
        fmt = _detect_format(path)
    schema = _SCHEMAS[fmt]

    skipped: Counter[str] = Counter()
    parsed: list[tuple[int, Interaction]] = []
    rows = 0
    with _open_binary(path) as fh:
        records = _csv_records(fh) if fmt == "csv" else _json_records(fh)
        bar: Iterable[Mapping[str, Any] | str] = tqdm(
            records, unit="rows", desc=os.path.basename(os.fspath(path)), disable=not progress
        )
        for row, record in enumerate(bar):
            rows += 1
            result = (
                record
                if isinstance(record, str)
                else _to_interaction(record, schema, rating_scale, row)
            )
            if isinstance(result, str):
                skipped[result] += 1
            else:
                parsed.append((row, result))

    parsed.sort(key=lambda pair: (pair[1].timestamp, pair[0]))
    seen: set[tuple[str, str]] = set()
    kept: list[Interaction] = []
    for _, interaction in parsed:
        pair = (interaction.user, interaction.item)
        if pair not in seen:
            seen.add(pair)
            kept.append(interaction)
    return LoadReport(kept, rows, dict(skipped), len(parsed) - len(kept), fmt)


def filter_min_counts(
    interactions: Sequence[Interaction], min_user: int, min_item: int
) -> list[Interaction]:
    """Drop users with < min_user and items with < min_item ratings until none is left (k-core).

    One pass is not enough: removing a sparse item can push a user below the threshold,
    so it repeats until stable. Only rated interactions count, as in the paper's filter
    ("users with fewer than twenty ratings"); a text-only interaction survives exactly
    when its user and item do. Order is kept.
    """
    kept = list(interactions)
    while True:
        users = Counter(x.user for x in kept if x.rating is not None)
        items = Counter(x.item for x in kept if x.rating is not None)
        survivors = [x for x in kept if users[x.user] >= min_user and items[x.item] >= min_item]
        if len(survivors) == len(kept):
            return survivors
        kept = survivors


@dataclass(frozen=True, slots=True)
class Split:
    """The paper's three parts, each in stream order (timestamp, then original order)."""

    train: list[Interaction]
    test: list[Interaction]
    valid: list[Interaction]


def split_interactions(
    interactions: Sequence[Interaction],
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 0,
) -> Split:
    """Randomly split into train:test:valid (the paper's 70:20:10), deterministic per seed.

    A random split, not a temporal one, because that is the paper's protocol; each part is
    then put back in stream order so that a streaming learner replays it as events.
    Part sizes are rounded cumulatively, so they always add up to the input size.
    """
    if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise ValueError(f"ratios must be three finite non-negative numbers, got {ratios}")
    total = float(sum(ratios))
    if total <= 0:
        raise ValueError("ratios must not all be zero")
    n = len(interactions)
    cuts = np.round(np.cumsum(ratios)[:2] / total * n).astype(np.int64)
    permutation = np.random.default_rng(seed).permutation(n)

    def in_stream_order(indices: np.ndarray) -> list[Interaction]:
        order = sorted(indices.tolist(), key=lambda i: (interactions[i].timestamp, i))
        return [interactions[i] for i in order]

    train, test, valid = np.split(permutation, cuts)
    return Split(in_stream_order(train), in_stream_order(test), in_stream_order(valid))


class DatasetStats(TypedDict):
    """Headline figures of a dataset, in the shape reports print (the paper's Table 2)."""

    users: int
    items: int
    interactions: int
    ratings: int  # interactions that carry a rating
    texts: int  # interactions that carry review text
    density: float  # distinct (user, item) pairs / (users * items)
    mean_rating: float | None  # None when nothing is rated


def describe(interactions: Sequence[Interaction]) -> DatasetStats:
    """Count users, items and modalities, so every report states what it was measured on."""
    users = {x.user for x in interactions}
    items = {x.item for x in interactions}
    ratings = [x.rating for x in interactions if x.rating is not None]
    pairs = len({(x.user, x.item) for x in interactions})
    cells = len(users) * len(items)
    return DatasetStats(
        users=len(users),
        items=len(items),
        interactions=len(interactions),
        ratings=len(ratings),
        texts=sum(1 for x in interactions if x.text is not None),
        density=pairs / cells if cells else 0.0,
        mean_rating=float(np.mean(ratings)) if ratings else None,
    )


# --- reading -------------------------------------------------------------------------


def _open_binary(path: str | os.PathLike[str]) -> gzip.GzipFile | io.BufferedReader:
    """Open plain or gzip files alike; the magic bytes decide, since names can lie."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _detect_format(path: str | os.PathLike[str]) -> str:
    """Pick a format from the extension (CSV) or the keys of the first valid JSON object."""
    name = os.fspath(path).lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    with _open_binary(path) as fh:
        for line in fh:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            if "reviewerID" in record:
                # 2014 and 2018 share one loader; only 2018 has the "verified" flag.
                return "amazon18" if "verified" in record else "amazon14"
            if "user_id" in record and ("parent_asin" in record or "asin" in record):
                return "amazon23"
            if "user" in record:
                return "jsonl"
            keys = ", ".join(sorted(record)[:12])
            raise ValueError(f"cannot detect the format of {name} (first object keys: {keys})")
    # No valid JSON object at all: load as generic JSON lines so every row is reported.
    return "jsonl"


def _json_records(fh: Iterable[bytes]) -> Iterator[Mapping[str, Any] | str]:
    """Yield each non-blank line as a dict, or the reason it is not one."""
    for line in fh:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield INVALID_JSON
            continue
        yield record if isinstance(record, dict) else NOT_AN_OBJECT


def _csv_records(fh: gzip.GzipFile | io.BufferedReader) -> Iterator[Mapping[str, Any] | str]:
    """Yield each CSV record as a dict keyed by lower-cased header names."""
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.DictReader(text)
    header = [name.strip().lower() for name in reader.fieldnames or []]
    if "user" not in header or "item" not in header:
        raise ValueError(f"CSV header needs user and item columns, got {header}")
    reader.fieldnames = header
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error:  # e.g. a field over the csv module's size limit
            yield MALFORMED_CSV
            continue
        yield record


# --- validating one record -----------------------------------------------------------


def _to_interaction(
    record: Mapping[str, Any], schema: _Schema, rating_scale: int, row: int
) -> Interaction | str:
    """Build an Interaction from one record, or return the reason it must be skipped."""
    user = _as_id(record.get(schema.user))
    if user is None:
        return MISSING_USER
    item = next((i for i in (_as_id(record.get(k)) for k in schema.item) if i is not None), None)
    if item is None:
        return MISSING_ITEM
    try:
        rating = _as_number(record.get(schema.rating))
    except ValueError:
        return RATING_NOT_NUMBER
    if rating is not None and not 1.0 <= rating <= rating_scale:
        return rating_outside(rating_scale)
    try:
        raw_time = _as_number(record.get(schema.timestamp))
    except ValueError:
        return TIMESTAMP_NOT_NUMBER
    timestamp = float(row) if raw_time is None else raw_time * schema.seconds_per_unit
    parts = [t for t in (_as_text(record.get(k)) for k in schema.text) if t is not None]
    text = ". ".join(parts) if parts else None
    if rating is None and text is None:
        return NO_CONTENT
    return Interaction(user=user, item=item, rating=rating, text=text, timestamp=timestamp)


def _as_id(value: object) -> str | None:
    """Accept a non-blank string or an integer as an id; anything else counts as missing."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _as_number(value: object) -> float | None:
    """None when absent or blank; ValueError when present but not a finite number.

    Numeric strings are accepted because CSV has nothing else, and some JSON dumps quote
    their numbers; booleans are rejected although Python counts them as integers.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number: {value!r}")
    try:
        number = float(value)
    except OverflowError as err:
        raise ValueError(f"not a finite number: {value!r}") from err
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _as_text(value: object) -> str | None:
    """Keep text stripped; blank or non-string text is a missing modality (None)."""
    if isinstance(value, str):
        return value.strip() or None
    return None
