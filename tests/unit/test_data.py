"""Loading, filtering and splitting interactions: every format, every skip reason."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from drex_model.evaluate.data import (
    INVALID_JSON,
    MISSING_ITEM,
    MISSING_USER,
    NO_CONTENT,
    NOT_AN_OBJECT,
    RATING_NOT_NUMBER,
    TIMESTAMP_NOT_NUMBER,
    describe,
    filter_min_counts,
    load_interactions,
    rating_outside,
    split_interactions,
)
from drex_model.types import Interaction

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_lines(path: Path, lines: list[str | dict[str, object]]) -> Path:
    """Write JSON lines (dicts are serialised, strings written as-is), gzip if *.gz."""
    text = "\n".join(
        line if isinstance(line, str) else orjson.dumps(line).decode() for line in lines
    )
    data = (text + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def amazon14(user: str, item: str, rating: object, text: object, ts: object) -> dict[str, object]:
    return {
        "reviewerID": user,
        "asin": item,
        "overall": rating,
        "reviewText": text,
        "summary": "ignored",
        "unixReviewTime": ts,
    }


# --- Amazon 2014 / 2018 ----------------------------------------------------------------


@pytest.fixture
def amazon14_file(tmp_path: Path) -> Path:
    rows: list[str | dict[str, object]] = [
        amazon14("u1", "i1", 5.0, "great", 300),
        "{not json",
        "",  # blank lines are not rows
        {"asin": "i1", "overall": 4.0, "reviewText": "no user", "unixReviewTime": 1},
        {"reviewerID": "u2", "overall": 4.0, "reviewText": "no item", "unixReviewTime": 1},
        amazon14("u2", "i2", 7.0, "seven stars", 5),
        amazon14("u2", "i3", "abc", "odd rating", 5),
        amazon14("u3", "i1", None, "   ", 5),  # neither a rating nor text
        amazon14("u3", "i2", 3.0, "", 200),  # empty text -> None, row kept
        amazon14("u1", "i1", 1.0, "same pair, earlier", 100),  # duplicate: earliest wins
        amazon14("u4", "i4", 2.0, "fine", 200),  # same time as u3-i2: file order decides
        "[1, 2, 3]",
        amazon14("u4", "i5", 4.0, "bad time", "yesterday"),
    ]
    return write_lines(tmp_path / "reviews.json.gz", rows)


def test_amazon14_counts_every_skip_reason(amazon14_file: Path) -> None:
    report = load_interactions(amazon14_file, fmt="amazon14")
    assert report.rows == 12
    assert report.skipped == {
        INVALID_JSON: 1,
        MISSING_USER: 1,
        MISSING_ITEM: 1,
        rating_outside(5): 1,
        RATING_NOT_NUMBER: 1,
        NO_CONTENT: 1,
        NOT_AN_OBJECT: 1,
        TIMESTAMP_NOT_NUMBER: 1,
    }
    assert report.duplicates == 1
    assert report.rows == len(report.interactions) + sum(report.skipped.values()) + 1
    assert report.summary().startswith("12 rows -> 3 interactions; skipped 8 (")
    assert report.summary().endswith("; duplicates 1")


def test_amazon14_keeps_earliest_duplicate_and_sorts_by_time(amazon14_file: Path) -> None:
    report = load_interactions(amazon14_file, fmt="amazon14")
    assert report.interactions == [
        Interaction("u1", "i1", 1.0, "same pair, earlier", 100.0),
        Interaction("u3", "i2", 3.0, None, 200.0),
        Interaction("u4", "i4", 2.0, "fine", 200.0),
    ]


def test_rating_scale_widens_the_valid_range(amazon14_file: Path) -> None:
    report = load_interactions(amazon14_file, fmt="amazon14", rating_scale=10)
    assert ("u2", "i2", 7.0) in [(x.user, x.item, x.rating) for x in report.interactions]
    assert rating_outside(10) not in report.skipped


def test_clean_file_summary_and_auto_detection(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "clean.json",
        [amazon14("a", "x", 5.0, "ok", 2), amazon14("b", "x", 4.0, None, 1)],
    )
    report = load_interactions(path)
    assert report.fmt == "amazon14"
    assert report.summary() == "2 rows -> 2 interactions; skipped 0; duplicates 0"
    assert [x.user for x in report.interactions] == ["b", "a"]
    assert report.interactions[0].text is None


def test_amazon18_is_detected_by_its_verified_flag(tmp_path: Path) -> None:
    row = amazon14("a", "x", 5.0, "ok", 2) | {"verified": True, "style": {"Size:": " L"}}
    assert load_interactions(write_lines(tmp_path / "r.json", [row])).fmt == "amazon18"


def test_progress_bar_does_not_change_the_result(amazon14_file: Path) -> None:
    quiet = load_interactions(amazon14_file, fmt="amazon14")
    loud = load_interactions(amazon14_file, fmt="amazon14", progress=True)
    assert quiet == loud


# --- Amazon 2023 -------------------------------------------------------------------------


def test_amazon23_fields_milliseconds_and_parent_asin(tmp_path: Path) -> None:
    rows: list[str | dict[str, object]] = [
        {
            "rating": 4.0,
            "title": "Nice",
            "text": "works well",
            "asin": "V1",
            "parent_asin": "P1",
            "user_id": "u1",
            "timestamp": 1_600_000_000_500,
            "helpful_vote": 0,
            "verified_purchase": True,
        },
        {"rating": 2.0, "title": "", "text": "meh", "asin": "A2", "user_id": "u2", "timestamp": 5},
        {"rating": 3.0, "title": "Title only", "text": " ", "asin": "A3", "user_id": "u3"},
        {"rating": 9.0, "title": "x", "text": "y", "asin": "A4", "user_id": "u4", "timestamp": 1},
    ]
    report = load_interactions(write_lines(tmp_path / "Cat.jsonl", rows))
    assert report.fmt == "amazon23"
    assert report.skipped == {rating_outside(5): 1}
    by_user = {x.user: x for x in report.interactions}
    assert by_user["u1"].item == "P1"
    assert by_user["u1"].text == "Nice. works well"
    assert by_user["u1"].timestamp == pytest.approx(1_600_000_000.5)
    assert by_user["u2"].item == "A2"  # no parent_asin: fall back to asin
    assert by_user["u2"].text == "meh"
    assert by_user["u2"].timestamp == pytest.approx(0.005)
    assert by_user["u3"].text == "Title only"
    assert by_user["u3"].timestamp == 2.0  # missing timestamp -> row index


# --- generic JSON lines and CSV ----------------------------------------------------------


def test_generic_jsonl_with_missing_modalities_and_times(tmp_path: Path) -> None:
    rows: list[str | dict[str, object]] = [
        {"user": "a", "item": "x", "text": "only text"},
        {"user": "b", "item": "x", "rating": 3},
        {"user": 7, "item": "y", "rating": "4.5", "timestamp": 0.5},
        {"user": "c", "item": "y", "rating": "nan"},
        {"user": "", "item": "y", "rating": 3},
    ]
    report = load_interactions(write_lines(tmp_path / "events.jsonl", rows))
    assert report.fmt == "jsonl"
    assert report.skipped == {RATING_NOT_NUMBER: 1, MISSING_USER: 1}
    assert report.interactions == [
        Interaction("a", "x", None, "only text", 0.0),
        Interaction("7", "y", 4.5, None, 0.5),
        Interaction("b", "x", 3.0, None, 1.0),
    ]


def test_csv_plain_and_gzip_with_auto_detection(tmp_path: Path) -> None:
    text = (
        "User,Item,Rating,Text,Timestamp\n"
        'a,x,5,"good, really",10\n'
        "b,x,,text without rating,5\n"
        "c,y,abc,bad rating,1\n"
        ",y,4,no user,1\n"
        "d,y,,,3\n"
    )
    plain = tmp_path / "r.csv"
    plain.write_text(text)
    zipped = tmp_path / "r.csv.gz"
    zipped.write_bytes(gzip.compress(text.encode()))
    for path in (plain, zipped):
        report = load_interactions(path)
        assert report.fmt == "csv"
        assert report.rows == 5
        assert report.skipped == {RATING_NOT_NUMBER: 1, MISSING_USER: 1, NO_CONTENT: 1}
        assert report.interactions == [
            Interaction("b", "x", None, "text without rating", 5.0),
            Interaction("a", "x", 5.0, "good, really", 10.0),
        ]


def test_csv_without_user_and_item_columns_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("who,what\na,b\n")
    with pytest.raises(ValueError, match="user and item"):
        load_interactions(path)


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "misnamed.json"
    path.write_bytes(gzip.compress(b'{"user": "a", "item": "x", "rating": 5}\n'))
    assert len(load_interactions(path).interactions) == 1


def test_unknown_format_and_unrecognised_keys_raise(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.json", [{"who": "a", "what": "x"}])
    with pytest.raises(ValueError, match="unknown format"):
        load_interactions(path, fmt="parquet")
    with pytest.raises(ValueError, match="cannot detect"):
        load_interactions(path)


def test_file_of_garbage_reports_every_row(tmp_path: Path) -> None:
    report = load_interactions(write_lines(tmp_path / "junk.json", ["{", "nope", "]["]))
    assert report.interactions == []
    assert report.skipped == {INVALID_JSON: 3}


# --- filtering, splitting, describing ----------------------------------------------------


def rated(user: str, item: str, ts: float = 0.0) -> Interaction:
    return Interaction(user, item, 4.0, None, ts)


def test_filter_min_counts_repeats_until_stable() -> None:
    data = [
        rated("A", "x"),
        rated("A", "y"),
        rated("B", "x"),
        rated("B", "y"),
        rated("C", "y"),
        rated("C", "z"),
        rated("D", "z"),
    ]
    # D goes first (1 rating), then z (left with 1), then C (left with 1).
    assert filter_min_counts(data, min_user=2, min_item=2) == data[:4]
    assert filter_min_counts(data, min_user=1, min_item=1) == data


def test_filter_min_counts_counts_only_ratings() -> None:
    kept = [rated("A", "x"), rated("A", "y"), rated("B", "x"), rated("B", "y")]
    text_of_kept = Interaction("A", "x", None, "text on a kept pair", 1.0)
    text_only_user = [Interaction("E", "x", None, f"review {n}", 0.0) for n in range(3)]
    data = [*kept, text_of_kept, *text_only_user]
    assert filter_min_counts(data, min_user=2, min_item=2) == [*kept, text_of_kept]


def test_split_ratios_disjointness_and_stream_order() -> None:
    data = [rated(f"u{n % 37}", f"i{n}", ts=float(n // 3)) for n in range(1000)]
    split = split_interactions(data, seed=3)
    assert (len(split.train), len(split.test), len(split.valid)) == (700, 200, 100)
    parts = [split.train, split.test, split.valid]
    assert sorted(id(x) for part in parts for x in part) == sorted(id(x) for x in data)
    position = {id(x): n for n, x in enumerate(data)}
    for part in parts:
        keys = [(x.timestamp, position[id(x)]) for x in part]
        assert keys == sorted(keys)


def test_split_is_deterministic_per_seed() -> None:
    data = [rated(f"u{n}", f"i{n}", ts=float(n)) for n in range(200)]
    assert split_interactions(data, seed=1) == split_interactions(data, seed=1)
    assert split_interactions(data, seed=1).test != split_interactions(data, seed=2).test
    assert len(split_interactions(data, ratios=(8, 1, 1)).train) == 160


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.7, -0.2, 0.5), (0.0, 0.0, 0.0)])
def test_split_rejects_bad_ratios(ratios: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        split_interactions([rated("a", "x")], ratios=ratios)


def test_describe() -> None:
    data = [
        Interaction("a", "x", 5.0, "t", 0.0),
        Interaction("a", "y", 3.0, None, 1.0),
        Interaction("b", "x", None, "t", 2.0),
    ]
    assert describe(data) == {
        "users": 2,
        "items": 2,
        "interactions": 3,
        "ratings": 2,
        "texts": 2,
        "density": 0.75,
        "mean_rating": 4.0,
    }
    assert describe([])["mean_rating"] is None


# --- the real files (../shared/data) -----------------------------------------------------


@pytest.mark.data
def test_real_amazon_files_match_the_data_readme() -> None:
    music = SHARED_DATA / "amazon14_musical_instruments_5.json.gz"
    if not music.exists():
        pytest.skip("shared data folder absent: ../shared/data")
    report = load_interactions(music)
    assert report.fmt == "amazon14"
    assert report.skipped == {} and report.duplicates == 0
    stats = describe(report.interactions)
    assert (stats["interactions"], stats["users"], stats["items"]) == (10_261, 1_429, 900)
    assert len(filter_min_counts(report.interactions, 5, 5)) == 10_261  # already 5-core

    appliances = load_interactions(SHARED_DATA / "amazon18_appliances_5.json.gz")
    assert appliances.fmt == "amazon18"
    assert appliances.rows == 2_277
    assert len(appliances.interactions) == 183  # README: 183 distinct user-item pairs
    assert appliances.duplicates == 2_277 - 183
