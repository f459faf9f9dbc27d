"""Send contract events to Kafka: :class:`EventProducer`, and ``drex produce``.

``drex produce`` loads a dataset, plans its event stream with the faults real streams
have (:func:`streams.plan.plan_events`, which also gives the ground truth a correct
consumer must reach) and sends it, each record carrying its send position
(:data:`SEQ_HEADER`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from streams.events import (
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_RATING_SCALE,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    encode_rating,
    encode_review,
    event_key,
    validate_rating,
    validate_review,
)
from streams.kafka_client import KafkaClientSettings, add_client_flags
from streams.plan import RATING, REVIEW, Event, event_id_for, plan_events
from streams.usage import EXIT_STATUSES, HelpFormatter, fail

# --- sending -------------------------------------------------------------------------


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://h1:9092;kafka://h2:9092`` (faust's broker syntax) or ``h1:9092,h2:9092``
    -> ``["h1:9092", "h2:9092"]``."""
    hosts = []
    for part in broker.replace(",", ";").split(";"):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            hosts.append(part.rstrip("/"))
    if not hosts:
        raise ValueError(f"no broker address in {broker!r}")
    return hosts


SEQ_HEADER: Final = "drex-seq"  # optional record header: the producer's send position


class EventProducer:
    """Sends contract events to Kafka, keyed by user id.

    ``send_review`` / ``send_rating`` validate what they are about to send, so a bug in a
    caller shows up here rather than as a dead letter. Sends are batched by aiokafka; a
    failed delivery is raised by the next send or by :meth:`flush`.
    """

    def __init__(
        self,
        broker: str | Sequence[str],
        *,
        client_id: str = "drex-producer",
        linger_ms: int = 5,
        rating_scale: int = DEFAULT_RATING_SCALE,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        client_options: Mapping[str, Any] | None = None,
        **producer_options: Any,
    ) -> None:
        """``client_options``: connection keyword arguments for the producer *and* the
        admin client of :meth:`ensure_topics` (TLS/SASL:
        :func:`streams.kafka_client.aiokafka_options`); ``producer_options``: the
        producer's only."""
        from aiokafka import AIOKafkaProducer

        self.servers = bootstrap_servers(broker) if isinstance(broker, str) else list(broker)
        self.rating_scale = rating_scale
        self.max_text_chars = max_text_chars
        self.client_options = dict(client_options or {})
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.servers,
            client_id=client_id,
            linger_ms=linger_ms,
            **self.client_options,
            **producer_options,
        )
        self._pending: set[asyncio.Future[Any]] = set()
        self._error: BaseException | None = None
        self.sent = 0

    async def start(self) -> None:
        """Connect; on failure the client is closed again, so nothing leaks."""
        try:
            await self._producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            raise

    async def stop(self) -> None:
        """Flush what is buffered, then close the connection."""
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.stop()
        else:  # already failing: close without letting a flush error hide the first one
            with contextlib.suppress(Exception):
                await self._producer.stop()

    async def ensure_topics(
        self,
        partitions: int,
        topics: Sequence[str] = (REVIEWS_TOPIC, RATINGS_TOPIC),
        replication_factor: int = 1,
    ) -> list[str]:
        """Create missing topics with ``partitions`` partitions; returns those created.

        Without this a broker that auto-creates topics on first write gives them its
        default partition count, which may not be what the stream processor expects.
        """
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers, **self.client_options)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                await admin.create_topics(
                    [NewTopic(t, partitions, replication_factor) for t in missing]
                )
            return missing
        finally:
            await admin.close()

    async def send_review(
        self,
        user_id: str,
        item_id: str,
        text: str,
        event_time: float | None = None,
        event_id: str | None = None,
    ) -> None:
        """Send a review; the event time defaults to now, the id to the deterministic one."""
        eid = event_id or event_id_for(user_id, item_id, REVIEW)
        when = time.time() if event_time is None else event_time
        value = encode_review(eid, user_id, item_id, when, text)
        validate_review(value, max_text_chars=self.max_text_chars)
        await self.send_raw(REVIEWS_TOPIC, event_key(user_id), value)

    async def send_rating(
        self,
        user_id: str,
        item_id: str,
        rating: float,
        event_time: float | None = None,
        event_id: str | None = None,
    ) -> None:
        """Send a rating; the event time defaults to now, the id to the deterministic one."""
        eid = event_id or event_id_for(user_id, item_id, RATING)
        when = time.time() if event_time is None else event_time
        value = encode_rating(eid, user_id, item_id, when, rating)
        validate_rating(value, rating_scale=self.rating_scale)
        await self.send_raw(RATINGS_TOPIC, event_key(user_id), value)

    async def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send bytes as they are (tests and replays use it to send malformed events)."""
        self._raise_failed()
        future = await self._producer.send(
            topic, value, key=key, headers=list(headers) if headers else None
        )
        self._pending.add(future)
        future.add_done_callback(self._delivered)
        self.sent += 1

    async def flush(self) -> None:
        """Wait until everything sent so far is acknowledged; raise the first failure."""
        await self._producer.flush()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._raise_failed()

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()

    def _raise_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"a Kafka delivery failed: {error!r}") from error


# --- the CLI -------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``drex produce`` to the ``drex`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "produce",
        help="stream a dataset's reviews and ratings to Kafka, with faults",
        description="Stream a dataset to the 'reviews' and 'ratings' topics as contract "
        "events (docs/events.md), with dropped halves, duplicates, malformed events and "
        "reordering, deterministically by seed.",
        formatter_class=HelpFormatter,
        epilog=EXIT_STATUSES,
    )
    p.add_argument("--dataset", required=True, help="a file load_interactions reads, or 'sample'")
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    p.add_argument("--review-only", type=float, default=0.0, help="share sent as review alone")
    p.add_argument("--rating-only", type=float, default=0.0, help="share sent as rating alone")
    p.add_argument("--duplicate", type=float, default=0.0, help="share of events resent")
    p.add_argument("--malformed", type=float, default=0.0, help="malformed events per valid one")
    p.add_argument(
        "--max-delay", type=int, default=0, help="max positions between an interaction's halves"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the faults and the reordering")
    p.add_argument("--limit", type=int, default=0, help="only the first N interactions (0 = all)")
    p.add_argument(
        "--rating-scale",
        type=int,
        default=DEFAULT_RATING_SCALE,
        help="highest rating of the dataset (the worker accepts 1 to 5)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="create missing topics with this many partitions first (0 = leave to the broker)",
    )
    p.add_argument("--truth", default=None, help="write the ground truth JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_client_flags(p)  # --broker and TLS/SASL: the worker's flags and DREX_* variables
    p.set_defaults(func=cmd_produce)
    return p


def cmd_produce(args: argparse.Namespace) -> int:
    """Load, plan and send; returns the process exit code."""
    import tempfile
    from pathlib import Path

    from aiokafka.errors import KafkaError

    from drex_model.evaluate.data import load_interactions

    try:  # the connection settings first: a usage error costs no dataset load
        client = KafkaClientSettings.from_args(args)
    except ValueError as err:
        print(f"drex produce: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="drex-sample-") as tmp:
        dataset = args.dataset
        if dataset == "sample":
            from drex_model.evaluate.sample import write_sample

            dataset = str(write_sample(Path(tmp) / "sample.jsonl"))
        elif not Path(dataset).exists():
            return fail("produce", f"dataset {dataset!r} not found (give a file, or 'sample')")
        report = load_interactions(dataset, progress=not args.quiet, rating_scale=args.rating_scale)
    print(report.summary(), file=sys.stderr)
    rows = report.interactions[: args.limit] if args.limit > 0 else report.interactions
    try:
        plan = plan_events(
            rows,
            seed=args.seed,
            review_only=args.review_only,
            rating_only=args.rating_only,
            duplicate=args.duplicate,
            malformed=args.malformed,
            max_delay=args.max_delay,
            rating_scale=args.rating_scale,
        )
    except ValueError as err:
        print(f"drex produce: {err}", file=sys.stderr)
        return 2
    print(plan.truth.summary(), file=sys.stderr)
    if args.truth:
        Path(args.truth).write_bytes(plan.truth.to_json())
    try:
        sent, seconds = asyncio.run(
            _send_all(plan.events, client, args.rate, args.partitions, not args.quiet)
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (KafkaError, RuntimeError) as err:  # RuntimeError: a failed delivery, wrapped
        print(f"drex produce: cannot send to {client.broker}: {err}", file=sys.stderr)
        return 1
    rate = sent / seconds if seconds > 0 else float("inf")
    print(f"sent {sent} events in {seconds:.1f} s ({rate:,.0f} events/s)", file=sys.stderr)
    return 0


async def _send_all(
    events: Sequence[Event],
    client: KafkaClientSettings,
    rate: float,
    partitions: int,
    progress: bool,
) -> tuple[int, float]:
    """Send at ``rate`` events/s (paced against the start time, so sleeps do not drift)."""
    from tqdm import tqdm

    async with EventProducer(client.broker, client_options=client.aiokafka_options()) as producer:
        if partitions > 0:
            created = await producer.ensure_topics(partitions)
            if created:
                print(f"created topics {created} ({partitions} partitions)", file=sys.stderr)
        start = time.monotonic()
        with tqdm(total=len(events), unit="events", disable=not progress) as bar:
            for i, (topic, key, value) in enumerate(events):
                if rate > 0:
                    ahead = start + i / rate - time.monotonic()
                    if ahead > 0.001:
                        await asyncio.sleep(ahead)
                # the send position, so that a replay can restore the stream's order
                # across partitions (streams/replay.py; docs/events.md)
                await producer.send_raw(topic, key, value, [(SEQ_HEADER, str(i).encode())])
                if i % 256 == 255:
                    bar.update(256)
            bar.update(len(events) - bar.n)
        await producer.flush()
        return producer.sent, time.monotonic() - start
