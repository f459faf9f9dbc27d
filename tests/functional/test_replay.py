"""``drex replay`` without a broker: records in, interactions and evaluations out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.prequential import (
    Checkpoint,
    DReXStream,
    PrequentialSettings,
    RunningBaseline,
    checkpoints,
    prequential,
    run_stream,
)
from drex_model.evaluate.runner import EvaluateOptions, evaluate
from drex_model.evaluate.sample import write_sample
from drex_model.types import Interaction
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC, encode_rating, encode_review
from streams.plan import Event, plan_events
from streams.reconstruct import SourceRecord, feed_order, interactions_digest, reconstruct
from streams.replay import main
from streams.replay_args import parse_offsets, parse_time

T0 = 1_700_000_000.0


def as_records(
    events: Sequence[Event],
    partitions: int = 4,
    step: float = 0.002,
    start: float = T0,
    seq: bool = False,
) -> list[SourceRecord]:
    """Events as a broker would hold them: keyed partitions, offsets, send-time stamps."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for n, (topic, key, value) in enumerate(events):
        p = zlib.crc32(key) % partitions
        offset = offsets.get((topic, p), 0)
        offsets[(topic, p)] = offset + 1
        ms = round((start + n * step) * 1000)  # Kafka keeps milliseconds
        out.append(SourceRecord(topic, p, offset, ms / 1000, value, n if seq else None))
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("data") / "sample.jsonl", users=60, items=30)


@pytest.fixture(scope="module")
def rows(sample: Path) -> list[Interaction]:
    return load_interactions(sample).interactions


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Few interactions per item: the models learn it in seconds."""
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    return write_sample(path, users=40, items=30, per_user=6)


# --- reconstruction -----------------------------------------------------------------------


def test_a_faulty_stream_rebuilds_the_loaded_list(rows: list[Interaction]) -> None:
    plan = plan_events(rows, seed=1, duplicate=0.1, malformed=0.05, max_delay=20)
    rebuilt = reconstruct(as_records(plan.events))
    assert rebuilt.interactions == rows
    assert rebuilt.dead_letters == plan.truth.malformed_reasons
    assert rebuilt.outcomes["duplicate"] == plan.truth.duplicates
    assert rebuilt.outcomes["both"] == plan.truth.both == len(rows)
    assert rebuilt.repeated_pairs == 0
    assert len(rebuilt.letters) == plan.truth.malformed
    report = rebuilt.report()
    assert report.interactions == rows and report.fmt == "kafka"
    assert report.skipped["duplicate event"] == plan.truth.duplicates


def test_dropped_halves_come_back_as_single_modality_interactions(
    rows: list[Interaction],
) -> None:
    plan = plan_events(rows, seed=2, review_only=0.2, rating_only=0.2, max_delay=8)
    rebuilt = reconstruct(as_records(plan.events))
    assert [(x.user, x.item, x.timestamp) for x in rebuilt.interactions] == [
        (x.user, x.item, x.timestamp) for x in rows
    ]
    by_pair = {(x.user, x.item): x for x in rows}
    review_only = rating_only = 0
    for x in rebuilt.interactions:
        full = by_pair[(x.user, x.item)]
        assert x.rating in (None, full.rating) and x.text in (None, full.text)
        review_only += x.rating is None
        rating_only += x.text is None
    assert (review_only, rating_only) == (plan.truth.review_only, plan.truth.rating_only)
    # the lone halves waited for their partner until the end of the stream, then expired
    assert rebuilt.outcomes["expired"] == review_only + rating_only


def test_the_feed_does_not_depend_on_the_order_records_are_given(
    rows: list[Interaction],
) -> None:
    records = as_records(plan_events(rows, seed=3, duplicate=0.05, max_delay=5).events)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert feed_order(shuffled) == feed_order(records)
    a, b = reconstruct(records), reconstruct(shuffled)
    assert a.interactions == b.interactions
    assert interactions_digest(a.interactions) == interactions_digest(b.interactions)


def test_equal_event_times_keep_the_send_order() -> None:
    """The loader's tie-break is the row order; the producer sends rows in that order."""
    users = ["zed", "amy", "kim", "bob", "lee", "ann"]
    events: list[Event] = []
    for n, user in enumerate(users):
        events.append((REVIEWS_TOPIC, user.encode(), encode_review(f"r{n}", user, "amp", T0, "ok")))
        events.append((RATINGS_TOPIC, user.encode(), encode_rating(f"s{n}", user, "amp", T0, 4.0)))
    rebuilt = reconstruct(as_records(events, partitions=3))
    assert [x.user for x in rebuilt.interactions] == users
    # With equal record timestamps too, the order is still fixed: per partition by offset.
    same_ms = reconstruct(as_records(events, partitions=3, step=0.0))
    assert sorted(x.user for x in same_ms.interactions) == sorted(users)
    assert (
        same_ms.interactions == reconstruct(as_records(events, partitions=3, step=0.0)).interactions
    )


def test_a_send_sequence_header_orders_what_timestamps_cannot(rows: list[Interaction]) -> None:
    """A fast producer sends many events per millisecond: with partitions, the order of
    equal event times is then lost, unless the records carry the send position."""
    same_day = [Interaction(x.user, x.item, x.rating, x.text, 86_400.0) for x in rows]
    events = plan_events(same_day, seed=4, duplicate=0.05, malformed=0.02, max_delay=5).events
    fast = as_records(events, step=0.00005)  # 20 events per millisecond
    assert reconstruct(fast).interactions != same_day  # ties across partitions: lost
    with_seq = as_records(events, step=0.00005, seq=True)
    assert reconstruct(with_seq).interactions == same_day
    # one record without the header: the feed position is used for all, as without any
    mixed = [*with_seq[:-1], dataclasses.replace(with_seq[-1], seq=None)]
    assert reconstruct(mixed).interactions == reconstruct(fast).interactions


def test_a_late_half_is_a_repeated_pair_and_tombstones_are_skipped() -> None:
    review = encode_review("r1", "ann", "amp", 100.0, "warm tone")
    rating = encode_rating("s1", "ann", "amp", 100.0, 5.0)
    records = [
        SourceRecord(REVIEWS_TOPIC, 0, 0, T0, review),
        SourceRecord(REVIEWS_TOPIC, 0, 1, T0 + 1, None),
        SourceRecord(RATINGS_TOPIC, 0, 0, T0 + 100, rating),  # after the 30 s window
    ]
    rebuilt = reconstruct(records, join_window=30.0)
    assert rebuilt.interactions == [Interaction("ann", "amp", None, "warm tone", 100.0)]
    assert rebuilt.outcomes["late"] == 1 and rebuilt.repeated_pairs == 1
    assert rebuilt.tombstones == 1 and rebuilt.records == 2
    # a window long enough joins them
    joined = reconstruct(records, join_window=300.0)
    assert joined.interactions == [Interaction("ann", "amp", 5.0, "warm tone", 100.0)]
    with pytest.raises(ValueError, match="no event contract"):
        reconstruct([SourceRecord("interactions", 0, 0, T0, review)])


def test_range_arguments_parse() -> None:
    assert parse_time("1500000000") == 1_500_000_000.0
    assert parse_time("2017-07-14T02:40:00Z") == 1_500_000_000.0
    assert parse_time("2017-07-14T02:40:00") == 1_500_000_000.0  # UTC when no zone
    assert parse_time("2017-07-14T04:40:00+02:00") == 1_500_000_000.0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")
    bound = parse_offsets("10,reviews:2=5")
    assert bound.get("reviews", 2) == 5 and bound.get("reviews", 1) == 10
    assert bound.get("ratings", 2) == 10
    assert parse_offsets("ratings:0=7").get("ratings", 1) is None
    for bad in ("x", "reviews=3", "-1", "reviews:a=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_offsets(bad)


# --- prequential ------------------------------------------------------------------------


def _stream() -> list[Interaction]:
    return [
        Interaction("ann", "amp", 5.0, None, 1.0),
        Interaction("bob", "amp", 3.0, None, 2.0),
        Interaction("ann", "cable", 4.0, None, 3.0),
        Interaction("cat", "drum", 2.0, None, 4.0),
        Interaction("bob", "cable", 5.0, None, 5.0),  # relevant for bob at position 4
        Interaction("ann", "drum", 2.0, None, 6.0),  # not relevant (rating < 4)
        Interaction("dan", "amp", 5.0, None, 7.0),  # dan is new at position 4: skipped
        Interaction("cat", "eq", 5.0, None, 8.0),  # eq is not known at position 4
    ]


def test_checkpoints_rank_known_items_for_known_users() -> None:
    (test,) = checkpoints(_stream(), 4)
    assert isinstance(test, Checkpoint)
    assert test.position == 4 and test.users == ["bob"]
    assert test.items == ["amp", "cable", "drum"]
    assert [test.items[j] for j in test.candidates[0]] == ["cable", "drum"]  # not amp: seen
    assert test.relevant[0].tolist() == [True, False]
    assert checkpoints(_stream(), 0) == []


def test_running_baselines_score_before_they_learn() -> None:
    stream = _stream()
    mean = RunningBaseline("global-mean").learn(stream)
    ratings = [x.rating or 0.0 for x in stream]
    assert mean[0] == 3.0  # the scale's midpoint before any rating
    assert mean[1:].tolist() == pytest.approx([np.mean(ratings[:j]) for j in range(1, len(stream))])
    bias = RunningBaseline("bias")
    bias.learn(stream[:2])
    mu = 4.0
    b_amp = (8.0 - 2 * mu) / (2 + 5)
    b_ann = (5.0 - mu - b_amp) / (1 + 5)
    assert bias.predict("ann", "amp") == pytest.approx(mu + b_ann + b_amp)
    assert bias.predict("zoe", "new") == mu
    popularity = RunningBaseline("popularity")
    assert np.isnan(popularity.learn(stream)).all()
    assert popularity.scores(["x"], ["amp", "eq", "nope"]).tolist() == [[3.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="not a running estimate"):
        RunningBaseline("mf")


def test_drex_stream_scores_are_made_before_the_label_is_seen(
    tiny_encoder_dir: Path, rows: list[Interaction]
) -> None:
    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig

    stream = rows[:150]
    flipped = [*stream[:-1], Interaction(stream[-1].user, stream[-1].item, 1.0, None, 1e10)]
    settings = PrequentialSettings(batch_size=32, window=50)
    runs = []
    for data in (stream, flipped):
        config = DReXConfig.for_variant("drex", use_text=False, dim=8)
        learner = DReXLearner(config, seed=0)
        runs.append(run_stream(DReXStream(learner), data, settings, checkpoints(data, 50)))
    a, b = runs
    assert np.array_equal(a.predictions, b.predictions)  # the last label changed nothing
    assert len(a.rankings) == 2 and all(rows_ for rows_ in a.rankings)


def test_prequential_writes_results_and_repeats_exactly(
    tiny_encoder_dir: Path, small: Path, tmp_path: Path
) -> None:
    stream = load_interactions(small).interactions  # 240 interactions

    def run(name: str, seeds: tuple[int, ...]) -> dict[str, Any]:
        opts = EvaluateOptions(
            dataset=str(small),
            output=str(tmp_path / name),
            seeds=seeds,
            variants=("drex",),
            baselines=("global-mean", "bias", "popularity"),
            min_user=0,
            min_item=0,
            encoder=str(tiny_encoder_dir),
            cache_dir=str(tmp_path / "cache"),
            overrides={"dim": 8},
            progress=False,
        )
        return prequential(opts, stream, PrequentialSettings(batch_size=32, window=100))

    first = run("a", (0, 1))
    out = tmp_path / "a"
    saved = json.loads((out / "results.json").read_text())
    models = saved["models"]
    assert set(models) == {"drex", "global-mean", "bias", "popularity"}
    for key in ("mae", "rmse", "rmse_std", "rmse_cold", "rmse_warm", "f1@5", "ndcg@10", "users"):
        assert key in models["drex"], key
    assert "mae" not in models["popularity"] and "ndcg@10" in models["popularity"]
    assert models["global-mean"]["ndcg@10"] == 0.0  # constant scores: pessimistic ties
    for name in ("drex", "popularity"):
        assert 0.0 < models[name]["coverage@10"] <= 1.0 and models[name]["distinct@10"] > 0.0
        assert models[name]["logpop@10"] > 0.0
    assert models["bias"]["rmse"] < models["global-mean"]["rmse"]
    assert 0.0 < models["drex"]["expl_coverage"] <= 1.0  # explained before each batch
    assert "expl_coverage" not in models["bias"]
    assert "| expl_coverage |" in (out / "results.md").read_text()
    windows = saved["curves"]["drex"][0]["windows"]
    assert [w["end"] for w in windows] == [100, 200, 240]
    assert [c["seed"] for c in saved["curves"]["drex"]] == [0, 1]
    assert [p["position"] for p in saved["curves"]["bias"][0]["checkpoints"]] == [100, 200]
    assert "| bias |" in (out / "results.md").read_text()
    assert "| coverage@10 |" in (out / "results.md").read_text()
    assert (out / "prequential.png").stat().st_size > 1000
    # same seed, same stream: the same numbers
    second = run("b", (0,))
    assert second["curves"]["drex"][0] == first["curves"]["drex"][0]
    for name in ("global-mean", "bias", "popularity"):
        assert {k: v for k, v in second["models"][name].items() if "seconds" not in k} == {
            k: v for k, v in first["models"][name].items() if "seconds" not in k
        }


def test_prequential_refuses_what_has_no_stream_form(
    rows: list[Interaction], tmp_path: Path
) -> None:
    for variants, baselines, match in ((("drex-mlp",), (), "drex-mlp"), ((), ("mf",), "mf")):
        opts = EvaluateOptions(
            dataset="x", output=str(tmp_path), variants=variants, baselines=baselines
        )
        with pytest.raises(ValueError, match=match):
            prequential(opts, rows)


# --- paper mode and the CLI -----------------------------------------------------------------


def test_paper_mode_on_rebuilt_interactions_equals_evaluate_on_the_file(
    tiny_evaluate_options: Callable[..., EvaluateOptions], small: Path, tmp_path: Path
) -> None:
    rows = load_interactions(small).interactions
    rebuilt = reconstruct(as_records(plan_events(rows, duplicate=0.05, max_delay=3).events))
    assert rebuilt.interactions == rows
    results = []
    for name, data in (("file", None), ("replay", rebuilt.report())):
        results.append(evaluate(tiny_evaluate_options(small, name), data=data))
    file, replay = (r["models"] for r in results)
    for model in ("drex", "bias"):
        for key in ("mae", "rmse", "f1@5", "ndcg@10", "paper_ndcg@5"):
            assert replay[model][key] == file[model][key], (model, key)
    assert results[1]["data"]["interactions"] == results[0]["data"]["interactions"]
    assert "kafka" not in results[0]["data"]["load"]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    from streams.broker import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(SystemExit, match=r"^drex replay: cannot reach"):
        main(["--broker", f"kafka://127.0.0.1:{port}", "--output", str(tmp_path), "--quiet"])
    with pytest.raises(SystemExit, match="--until must be later"):
        main(["--output", str(tmp_path), "--since", "200", "--until", "100", "--quiet"])
    with pytest.raises(SystemExit) as info:  # argparse: usage error, exit code 2
        main(["--output", str(tmp_path), "--since", "soon"])
    assert info.value.code == 2
