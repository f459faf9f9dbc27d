"""``drex replay`` against a real (embedded) broker: produce the sample, replay it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.runner import EvaluateOptions, evaluate
from drex_model.evaluate.sample import write_sample
from streams.broker import EmbeddedBroker, create_topics
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC
from streams.plan import plan_events
from streams.reconstruct import interactions_digest, reconstruct
from streams.replay import OffsetBound, main, read_records
from tests.integration.harness import send

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

    read = read_records(fresh_broker.url, embedded=True)
    assert len(read.records) == read.read == len(plan.events)
    rebuilt = reconstruct(read.records)
    assert rebuilt.interactions == rows
    assert rebuilt.dead_letters == plan.truth.malformed_reasons
    assert rebuilt.outcomes["duplicate"] == plan.truth.duplicates

    # an offset range reads only that part of each partition
    part = read_records(fresh_broker.url, embedded=True, to_offset=OffsetBound(5))
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
