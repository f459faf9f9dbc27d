"""``drex replay``: evaluate the model from the Kafka topics, off the live system.

    drex replay --broker kafka://HOST:PORT --output DIR [--mode paper|prequential]
                [--since T] [--until T] [--from-offset N] [--to-offset N] [--allow-gaps]

Three steps, each its own function so that tests can feed records without a broker:

1. :func:`read_records` (here) reads ``reviews`` and ``ratings`` (from the beginning, an
   offset range, or filtered to a range of Kafka record timestamps) to their end as it
   was when the replay started. It is a plain consumer with no group: manual assignment
   and seeks, ``group_id=None``, nothing committed, nothing produced, so the live
   worker's consumer group, offsets and topics are untouched.
2. :func:`streams.reconstruct.reconstruct` turns the records into interactions with the
   worker's own join, :class:`streams.agents.join.Joiner`, over a dict instead of the
   RocksDB table: records go in merged by Kafka timestamp (each partition in offset
   order), the simulated wall clock follows the record timestamps, and at the end every
   half still waiting is expired. Invalid events become dead letters (counted by reason,
   written to ``DIR/dead_letters.jsonl``), resends are dropped by the Joiner. The
   interactions are then ordered as ``drex evaluate`` orders a file, by (event time,
   send order), where the send order of an interaction is that of its first half (the
   producer's :data:`SEQ_HEADER` when every record has one, else its feed position), and
   a repeated (user, item) pair keeps its first interaction, as the loader does.
3. ``--mode paper`` runs ``drex evaluate``'s protocol on them
   (:func:`drex_model.evaluate.runner.evaluate` with ``data=``); ``--mode prequential``
   runs :func:`drex_model.evaluate.prequential.prequential`: test-then-train over the
   stream with :meth:`DReXLearner.learn_many`, the call the worker makes.

This module is the Kafka side (reading, the CLI); the join and the evaluation it calls
need no broker. See docs/replay.md for the protocols, determinism and what "same order"
can promise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drex_model.evaluate.prequential import (
    PREQUENTIAL_BASELINES,
    PREQUENTIAL_VARIANTS,
    PrequentialSettings,
    prequential,
)
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC
from streams.kafka_client import KafkaClientSettings
from streams.producer import SEQ_HEADER
from streams.reconstruct import (
    SourceRecord,
    interactions_digest,
    reconstruct,
    write_interactions,
)
from streams.replay_args import (
    OffsetBound,
    add_arguments,
    check_names,
)
from streams.usage import HelpFormatter


class ReplayError(RuntimeError):
    """Something the user must fix (broker, topics, range); the CLI prints it, no trace."""


# --- reading ---------------------------------------------------------------------------


@dataclass
class ReadResult:
    """Records read and exactly what was read, for the report."""

    records: list[SourceRecord]
    ranges: dict[str, tuple[int, int]]  # "topic:partition" -> [start, end) offsets read
    read: int  # records read in those ranges (before the time filter)
    missing: list[str]  # source topics that do not exist
    counts: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> records read


def shortfalls(read: ReadResult) -> dict[str, int]:
    """Records missing by "topic:partition", for each partition that gave fewer records
    than its range [start, end) spans. Every offset in it should hold one (the end is what
    the broker held at the start), unless the topic is compacted or has transaction markers.
    """
    spans = {tp: b - a - read.counts.get(tp, 0) for tp, (a, b) in read.ranges.items()}
    return {tp: n for tp, n in spans.items() if n > 0}


def read_records(broker: str, **options: Any) -> ReadResult:
    """Read both source topics from ``broker``; the options of :func:`read_records_async`."""
    return asyncio.run(read_records_async(broker, **options))


async def read_records_async(
    broker: str,
    *,
    reviews_topic: str = REVIEWS_TOPIC,
    ratings_topic: str = RATINGS_TOPIC,
    since: float | None = None,
    until: float | None = None,
    from_offset: OffsetBound | None = None,
    to_offset: OffsetBound | None = None,
    timeout: float = 30.0,
    progress: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> ReadResult:
    """Every record of the source topics in the range, read to the end they had at start.

    Offsets: ``from_offset`` inclusive, ``to_offset`` exclusive, both clamped to what the
    partition holds. Times: ``since <= timestamp < until`` on the Kafka record timestamp,
    as a filter (partitions are read from their start offset: timestamps need not be
    ordered). The end of each partition is the larger of ListOffsets' answer and a Fetch
    high watermark (:func:`streams.compat.tansu_end_offsets`): they agree on a correct
    broker, and Tansu's ListOffsets can be short of the true end, whatever the flags.
    ``client_options``: TLS/SASL (:func:`streams.kafka_client.aiokafka_options`). Raises
    :class:`ReplayError` for an unreachable broker, missing topics or a stall; a short
    read is the caller's to judge (:func:`shortfalls`).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError
    from tqdm.auto import tqdm

    from streams.compat import tansu_end_offsets
    from streams.producer import bootstrap_servers

    kinds = {reviews_topic: REVIEWS_TOPIC, ratings_topic: RATINGS_TOPIC}
    if len(kinds) != 2:
        raise ReplayError("the reviews and ratings topics must differ")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(broker),
        client_id="drex-replay",
        group_id=None,  # no consumer group: nothing joins, nothing is committed
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(max(timeout, 5.0) * 1000),
        fetch_max_wait_ms=100,
        **dict(client_options or {}),
    )
    try:
        await consumer.start()
    except KafkaError as err:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise ReplayError(f"cannot reach {broker}: {err}") from None
    try:
        # topics() asks for all topics: unlike a request naming a topic, it makes no broker
        # auto-create a missing one (Tansu would), so a replay never creates topics.
        existing = await consumer.topics()
        missing = [t for t in kinds if t not in existing]
        tps: list[TopicPartition] = []
        for topic in kinds:
            if topic in existing:
                tps += [
                    TopicPartition(topic, p)
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
        if not tps:
            raise ReplayError(
                f"neither {reviews_topic!r} nor {ratings_topic!r} exists on {broker} "
                f"(topics there: {', '.join(sorted(existing)) or 'none'})"
            )
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        # Not ListOffsets alone: Tansu's answer can be short of what the partition holds
        # (STACK-NOTES), and a replay that trusted it silently read less than the topics.
        ends = await tansu_end_offsets(consumer, tps)
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:
            start, end = firsts[tp], ends[tp]
            if (
                from_offset is not None
                and (low := from_offset.get(tp.topic, tp.partition)) is not None
            ):
                start = max(start, low)
            if (
                to_offset is not None
                and (high := to_offset.get(tp.topic, tp.partition)) is not None
            ):
                end = min(end, high)
            ranges[tp] = (start, max(start, end))
        pending = {tp for tp, (start, end) in ranges.items() if end > start}
        for tp in tps:
            if tp in pending:
                consumer.seek(tp, ranges[tp][0])
        if len(pending) < len(tps):
            consumer.pause(*[tp for tp in tps if tp not in pending])
        records: list[SourceRecord] = []
        read = 0
        counts = dict.fromkeys(tps, 0)
        total = sum(end - start for start, end in ranges.values())
        last = time.monotonic()
        with tqdm(total=total, unit="records", desc="reading", disable=not progress) as bar:
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
                for tp, got in batch.items():
                    end = ranges[tp][1]
                    for r in got:
                        if r.offset >= end:
                            continue
                        read += 1
                        counts[tp] += 1
                        bar.update(1)
                        ts = max(int(r.timestamp or 0), 0) / 1000.0
                        if (since is not None and ts < since) or (
                            until is not None and ts >= until
                        ):
                            continue
                        records.append(
                            SourceRecord(
                                kinds[tp.topic], tp.partition, r.offset, ts, r.value, _seq(r)
                            )
                        )
                done = [tp for tp in pending if await consumer.position(tp) >= ranges[tp][1]]
                if batch or done:
                    last = time.monotonic()
                for tp in done:
                    pending.discard(tp)
                    consumer.pause(tp)
                if pending and time.monotonic() - last > timeout:
                    where = ", ".join(
                        [
                            f"{tp.topic}:{tp.partition} at {await consumer.position(tp)} of "
                            f"{ranges[tp][1]}"
                            for tp in sorted(pending)
                        ]
                    )
                    raise ReplayError(f"no progress for {timeout:.0f} s reading {where}")
        return ReadResult(
            records,
            {f"{tp.topic}:{tp.partition}": ranges[tp] for tp in tps},
            read,
            missing,
            {f"{tp.topic}:{tp.partition}": counts[tp] for tp in tps},
        )
    except KafkaError as err:
        raise ReplayError(f"reading from {broker} failed: {err!r}") from None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


def _seq(record: Any) -> int | None:
    for key, value in record.headers or ():
        if key == SEQ_HEADER:
            with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError):
                return int(bytes(value).decode("ascii"))
    return None


# --- the CLI -----------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``drex replay`` to the ``drex`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="evaluate the model from the Kafka topics (paper protocol or prequential)",
        description="Replay the reviews and ratings topics through the worker's join and "
        "the learner, with no consumer group and nothing written to Kafka, and evaluate: "
        "drex evaluate's protocol (--mode paper) or test-then-train over the stream "
        "(--mode prequential). See docs/replay.md.",
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_replay)
    return p


def cmd_replay(args: argparse.Namespace) -> int:
    """Read, rebuild, evaluate; returns the exit code (errors: SystemExit with a line;
    the statuses: :data:`EXIT_CODES`)."""
    try:  # settings and names first: a usage error never reaches the broker
        client = KafkaClientSettings.from_args(args)
        check_names(args)
    except ValueError as err:
        print(f"drex replay: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return _replay(args, client)
    except ReplayError as err:
        raise SystemExit(f"drex replay: {err}") from None
    except (ValueError, FileNotFoundError) as err:  # bad data or settings: say so, no trace
        raise SystemExit(f"drex replay: {err}") from None


def _replay(args: argparse.Namespace, client: KafkaClientSettings) -> int:
    from drex_model.evaluate.runner import DEFAULT_BASELINES, EvaluateOptions, evaluate
    from drex_model.model import VARIANTS
    from streams.producer import bootstrap_servers

    progress = not args.quiet
    paper = args.mode == "paper"
    out = Path(args.output)
    if args.limit < 0:
        raise ReplayError("--limit must be >= 0")
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise ReplayError("--until must be later than --since")
    settings = PrequentialSettings(
        batch_size=args.batch_size,
        window=args.window,
        checkpoint_every=-1 if args.checkpoint_every is None else args.checkpoint_every,
    )
    overrides = dict(args.set)  # typed by argparse (streams.usage.override)
    started = time.perf_counter()
    read = read_records(
        client.broker,
        reviews_topic=args.reviews_topic,
        ratings_topic=args.ratings_topic,
        since=args.since,
        until=args.until,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        timeout=args.read_timeout,
        progress=progress,
        client_options=client.aiokafka_options(),
    )
    read_seconds = time.perf_counter() - started
    short = shortfalls(read)
    for tp, n in short.items():
        where = f"offsets [{read.ranges[tp][0]}, {read.ranges[tp][1]})"
        print(f"drex replay: short read: {tp}: {n} records missing in {where}", file=sys.stderr)
    if short and not args.allow_gaps:
        raise ReplayError(
            f"{sum(short.values())} records fewer than the end offsets promised, in "
            f"{len(short)} partition(s) (above): the broker lost or compacted them, or the "
            "read stopped early; --allow-gaps replays what was read"
        )
    ranges = ", ".join(f"{tp} [{a}, {b})" for tp, (a, b) in read.ranges.items())
    if not read.records:
        raise ReplayError(
            f"no records in the selected range ({ranges}; {read.read} read, "
            f"since={args.since}, until={args.until})"
        )
    if read.missing:
        print(
            f"drex replay: topic(s) {read.missing} do not exist; replaying the rest",
            file=sys.stderr,
        )
    rebuilt = reconstruct(
        read.records,
        join_window=args.join_window,
        dedup_retention=args.dedup_retention,
        rating_scale=args.rating_scale,
        progress=progress,
    )
    print(f"drex replay: {rebuilt.summary()}", file=sys.stderr)
    if not rebuilt.interactions:
        raise ReplayError(
            f"the {len(read.records)} records made no interaction ({rebuilt.summary()})"
        )
    out.mkdir(parents=True, exist_ok=True)
    if rebuilt.letters:
        (out / "dead_letters.jsonl").write_bytes(b"".join(x + b"\n" for x in rebuilt.letters))
    if args.save_interactions:
        write_interactions(rebuilt.interactions, out / "interactions.jsonl")
    hosts = ",".join(bootstrap_servers(client.broker))
    label = f"replay of {args.reviews_topic}+{args.ratings_topic} at {hosts}"
    info = {
        "broker": client.broker,
        "topics": {"reviews": args.reviews_topic, "ratings": args.ratings_topic},
        "missing_topics": read.missing,
        "offsets": {tp: list(r) for tp, r in read.ranges.items()},
        "since": args.since,
        "until": args.until,
        "records_read": read.read,
        "records_missing": short,
        "records_in_range": len(read.records),
        "records_joined": rebuilt.records,
        "tombstones": rebuilt.tombstones,
        "dead_letters": rebuilt.dead_letters,
        "join_outcomes": rebuilt.outcomes,
        "repeated_pairs": rebuilt.repeated_pairs,
        "interactions": len(rebuilt.interactions),
        "interactions_digest": interactions_digest(rebuilt.interactions),
        "join_window": args.join_window,
        "dedup_retention": args.dedup_retention,
        "read_seconds": read_seconds,
        "summary": rebuilt.summary(),
    }
    variants = (
        args.variants
        if args.variants is not None
        else (list(VARIANTS) if paper else list(PREQUENTIAL_VARIANTS[:1]))
    )
    baselines = (
        args.baselines
        if args.baselines is not None
        else (list(DEFAULT_BASELINES) if paper else list(PREQUENTIAL_BASELINES))
    )
    default_min = 5 if paper else 0
    opts = EvaluateOptions(
        dataset=label,
        output=str(out),
        seeds=args.seeds,
        variants=variants,
        baselines=baselines,
        min_user=default_min if args.min_user is None else args.min_user,
        min_item=default_min if args.min_item is None else args.min_item,
        max_epochs=args.max_epochs,
        patience=args.patience,
        early_stop=args.early_stop,
        encoder=args.encoder,
        precision=args.precision,
        device=args.device,
        cache_dir=args.cache_dir,
        overrides=overrides,
        limit=args.limit,
        progress=progress,
    )
    if paper:
        results = {**evaluate(opts, data=rebuilt.report()), "mode": "paper"}
        plot = "learning_curves.png"
    else:
        results = prequential(opts, rebuilt.report(), settings)
        plot = "prequential.png"
    results["replay"] = info
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (out / "results.md").open("a", encoding="utf-8") as f:
        f.write(f"\nReplayed from Kafka: {ranges}; {rebuilt.summary()}.\n")
    print(f"wrote {out}/results.json, results.md and {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.replay ARGS``: the same as ``drex replay ARGS``."""
    parser = argparse.ArgumentParser(prog="drex replay", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd_replay(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
