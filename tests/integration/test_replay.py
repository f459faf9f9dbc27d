"""``drex replay`` against a real (embedded) broker: produce the sample, replay it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.runner import EvaluateOptions, evaluate
from drex_model.evaluate.sample import write_sample
from streams import producer
from streams.broker import EmbeddedBroker, create_topics
from streams.compat import fetch_high_watermarks
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC
from streams.plan import plan_events
from streams.reconstruct import interactions_digest, reconstruct
from streams.replay import OffsetBound, main, read_records
from tests.integration.harness import send

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def topics_and_groups(broker: EmbeddedBroker) -> tuple[set[str], list[object]]:
    async def go() -> tuple[set[str], list[object]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics()), list(await admin.list_consumer_groups())
        finally:
            await admin.close()

    return asyncio.run(go())


def test_replay_rebuilds_the_sample_and_evaluates_it_as_the_file(
    fresh_broker: EmbeddedBroker,
    tiny_encoder_dir: Path,
    tiny_evaluate_options: Callable[..., EvaluateOptions],
    tmp_path: Path,
) -> None:
    sample = write_sample(tmp_path / "sample.jsonl", users=50, items=30, per_user=6)
    rows = load_interactions(sample).interactions
    create_topics(fresh_broker.bootstrap, {REVIEWS_TOPIC: 4, RATINGS_TOPIC: 4})
    plan = plan_events(rows, seed=0, duplicate=0.05, malformed=0.02, max_delay=10)
    send(fresh_broker, plan.events)
    before = topics_and_groups(fresh_broker)
    assert before[1] == []

    read = read_records(fresh_broker.url)
    assert len(read.records) == read.read == len(plan.events)
    rebuilt = reconstruct(read.records)
    assert rebuilt.interactions == rows
    assert rebuilt.dead_letters == plan.truth.malformed_reasons
    assert rebuilt.outcomes["duplicate"] == plan.truth.duplicates

    # an offset range reads only that part of each partition
    part = read_records(fresh_broker.url, to_offset=OffsetBound(5))
    assert all(end <= 5 for _, end in part.ranges.values())
    assert all(r.offset < 5 for r in part.records) and len(part.records) == 8 * 5

    out = tmp_path / "replay"
    common = [
        "--seeds", "0", "--variants", "drex", "--baselines", "bias", "--max-epochs", "2",
        "--encoder", str(tiny_encoder_dir), "--cache-dir", str(tmp_path / "cache"),
        "--set", "dim=8", "--quiet",
    ]  # fmt: skip
    code = main(["--broker", fresh_broker.url, "--embedded", "--output", str(out), *common])
    assert code == 0
    replayed = json.loads((out / "results.json").read_text())
    assert replayed["mode"] == "paper"
    assert replayed["replay"]["interactions_digest"] == interactions_digest(rows)
    assert (out / "dead_letters.jsonl").read_bytes().count(b"\n") == plan.truth.malformed

    direct = evaluate(tiny_evaluate_options(sample, "file"))["models"]
    for model in ("drex", "bias"):
        for key, value in direct[model].items():
            if "seconds" not in key:
                assert replayed["models"][model][key] == value, (model, key)

    preq = tmp_path / "preq"
    code = main(["--broker", fresh_broker.url, "--embedded", "--output", str(preq),
                 "--mode", "prequential", "--window", "100", *common,
                 "--baselines", "bias", "popularity"])  # fmt: skip
    assert code == 0
    streamed = json.loads((preq / "results.json").read_text())
    assert streamed["mode"] == "prequential" and set(streamed["models"]) == {
        "drex",
        "bias",
        "popularity",
    }
    assert streamed["data"]["interactions"] == len(rows)
    assert (preq / "prequential.png").exists()

    # nothing was created on the broker: no topic, no consumer group, no commit
    assert topics_and_groups(fresh_broker) == before

    with pytest.raises(SystemExit, match="no records in the selected range"):
        main(["--broker", fresh_broker.url, "--output", str(tmp_path / "x"), "--since",
              "2999-01-01", "--embedded", "--quiet"])  # fmt: skip
    with pytest.raises(SystemExit, match="neither 'nope' nor 'nada' exists"):
        main(["--broker", fresh_broker.url, "--output", str(tmp_path / "x"), "--reviews-topic",
              "nope", "--ratings-topic", "nada", "--quiet"])  # fmt: skip
    assert topics_and_groups(fresh_broker) == before  # asking did not auto-create them


def tiny_run(encoder: Path, cache: Path) -> list[str]:
    """Flags of a small, fast evaluation (the tiny encoder, dim 8, 2 epochs, bias)."""
    return ["--seeds", "0", "--variants", "drex", "--baselines", "bias", "--max-epochs", "2",
            "--encoder", str(encoder), "--cache-dir", str(cache), "--set", "dim=8",
            "--quiet"]  # fmt: skip


def drex_produce(argv: list[str]) -> int:
    """``drex produce ARGV``: the real subcommand, registered as streams/cli.py does."""
    parser = argparse.ArgumentParser(prog="drex")
    producer.register(parser.add_subparsers())
    args = parser.parse_args(["produce", *argv])
    return int(args.func(args))


def list_offsets_and_high_watermarks(
    broker: EmbeddedBroker, topics: list[str]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    async def go() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            await consumer.topics()
            tps = [
                TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
            ]
            listed = dict(await consumer.end_offsets(tps))
            return listed, await fetch_high_watermarks(consumer._client, listed)
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_produce_and_replay_as_the_readme_writes_them_read_every_record(
    fresh_broker: EmbeddedBroker,
    tiny_encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No --broker and no --embedded: both commands find the broker in DREX_BROKER, and
    the replay reads to what the broker holds although Tansu's ListOffsets says less."""
    monkeypatch.setenv("DREX_BROKER", fresh_broker.url)
    sample = write_sample(tmp_path / "sample.jsonl", users=50, items=30, per_user=6)
    rows = load_interactions(sample).interactions
    assert drex_produce(["--dataset", str(sample), "--partitions", "4", "--quiet"]) == 0
    listed, held = list_offsets_and_high_watermarks(fresh_broker, [REVIEWS_TOPIC, RATINGS_TOPIC])
    assert sum(held.values()) == 2 * len(rows)  # produce reached the broker DREX_BROKER names
    assert sum(listed.values()) < sum(held.values())  # the ListOffsets answer a replay mistrusts

    read = read_records(fresh_broker.url)
    assert read.read == len(read.records) == 2 * len(rows)
    assert read.ranges == {f"{tp.topic}:{tp.partition}": (0, end) for tp, end in held.items()}

    out = tmp_path / "replay"
    assert main(["--output", str(out), *tiny_run(tiny_encoder_dir, tmp_path / "cache")]) == 0
    info = json.loads((out / "results.json").read_text())["replay"]
    assert info["broker"] == fresh_broker.url
    assert info["records_read"] == 2 * len(rows) and info["records_missing"] == {}
    assert info["interactions_digest"] == interactions_digest(rows)


def produce_with_gaps(broker: EmbeddedBroker, topic: str, deltas: list[int]) -> None:
    """One record batch whose records skip offsets, as a compacted log's batches do (Tansu
    keeps the offset deltas a producer sends): records at the given deltas only."""

    async def go() -> None:
        client = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await client.start()
        try:
            batch = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
            now = int(time.time() * 1000)
            for delta in deltas:
                batch.append(delta, now, None, b"not an event", [])
            tp = TopicPartition(topic, 0)
            await client.client.force_metadata_update()
            node = client.client.cluster.leader_for_partition(tp)
            request = ProduceRequest(None, -1, 10_000, [(topic, [(0, bytes(batch.build()))])])
            response = await client.client.send(node, request)
            assert response.topics[0][1][0][1] == 0, response  # no error
        finally:
            await client.stop()

    asyncio.run(go())


def test_a_replay_that_reads_fewer_records_than_the_end_offsets_fails_naming_them(
    broker: EmbeddedBroker,
    unique_topic: Callable[[str], str],
    tiny_encoder_dir: Path,
    tmp_path: Path,
) -> None:
    reviews, ratings = unique_topic("reviews"), unique_topic("ratings")
    create_topics(broker.bootstrap, {reviews: 1, ratings: 1})
    rows = load_interactions(
        write_sample(tmp_path / "sample.jsonl", users=30, items=20, per_user=6)
    ).interactions
    names = {REVIEWS_TOPIC: reviews, RATINGS_TOPIC: ratings}
    send(broker, [(names[t], k, v) for t, k, v in plan_events(rows, seed=0).events])
    produce_with_gaps(broker, ratings, [0, 2, 5])  # 6 offsets, 3 records
    _, held = list_offsets_and_high_watermarks(broker, [ratings])
    assert held[TopicPartition(ratings, 0)] == len(rows) + 6

    flags = ["--broker", broker.url, "--reviews-topic", reviews, "--ratings-topic", ratings,
             *tiny_run(tiny_encoder_dir, tmp_path / "cache")]  # fmt: skip
    cli = subprocess.run(
        [sys.executable, "-m", "streams.replay", "--output", str(tmp_path / "short"), *flags],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 1, cli.stderr
    where = f"[0, {len(rows) + 6})"
    assert f"short read: {ratings}:0: 3 records missing in offsets {where}" in cli.stderr
    assert "3 records fewer than the end offsets promised, in 1 partition(s)" in cli.stderr
    assert not (tmp_path / "short" / "results.json").exists()  # nothing evaluated

    out = tmp_path / "gaps"
    assert main(["--output", str(out), "--allow-gaps", *flags]) == 0
    info = json.loads((out / "results.json").read_text())["replay"]
    assert info["records_missing"] == {f"{ratings}:0": 3}
    assert info["records_read"] == 2 * len(rows) + 3
    assert info["interactions_digest"] == interactions_digest(rows)
