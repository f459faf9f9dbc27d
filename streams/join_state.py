"""The join's own state: one RocksDB per source partition, changelogged once per step.

The join (streams/agents/join.py) keeps its waiting halves and remembered event ids in
rows (bytes -> bytes, :class:`streams.agents.join.Joiner`). Here they live in stores the
join owns instead of a faust table, so a step costs one changelog record and one RocksDB
write batch per partition, not faust's per-row table and changelog work:

* **Local stores.** Source partition ``p`` has its rocksdict ``Rdict`` at
  ``<state dir>/join-state/p<p>`` (raw bytes; small memtables and one small block cache
  shared by all partitions, as the faust tables had). Besides the rows (JSON keys, which
  start with ``[``) each store holds two reserved keys starting with ``\\x00``: the next
  source offset per source topic (:data:`OFFSETS_KEY`, JSON ``{topic: offset}``) and the
  offset of the last changelog record it holds (:data:`CHANGELOG_KEY`, ASCII).
* **A step's commit** (:meth:`JoinState.commit`), after the step's interactions were
  sent and acknowledged: per partition, the step's row writes and the next source offsets
  go first to the changelog topic ``<app id>-join-state`` (as many partitions as the
  sources; partition ``p``) as ONE record, ``{"w": {key: value or null}, "o": {topic:
  next offset}}`` (keys and values as latin-1 strings: any bytes, ASCII unchanged), and
  once the broker has acknowledged it, into ONE write batch with the record's offset. A
  step whose writes exceed :data:`RECORD_BYTES` is split into several records of one group
  (``"g"``, every one but the last ``"more": true``, the last with ``"o"``); a reader
  applies a group only when its last record is there.
* **What was applied.** A source message below the stored next offset of its topic and
  partition came before (a crash after the write batch, before faust committed the
  consumer offset): its event id is in the rows, so the join drops it (outcome
  ``replayed``). One whose id is not there is a new event of a topic that started again
  (a broker restarted empty, a topic made again): it is joined, and the offsets follow the
  new topic (``drex_source_resets_total{state="join"}``). So nothing is applied twice and
  nothing new is dropped; a crash between the interactions' acknowledgement and the
  changelog record re-sends the step's interactions with the same event ids, which the
  learner drops (:func:`streams.events.without_applied`).
* **Recovery** (:meth:`JoinState.ensure`, awaited by the join before it handles any
  message of a partition it was given): the local store is brought up to the changelog's
  end (the true end: :func:`streams.compat.tansu_end_offsets`) from the record after the
  one it holds, or from the start when there is none. That is how a partition moves
  between workers, and how a worker killed between a changelog record and its write batch
  catches up. A changelog that ends before the stored offset started again (the embedded
  broker restarted empty, the topic was made again): the rows are kept, the stored source
  offsets are dropped (the new source topics start at 0 too) and the new changelog is read
  on top (``drex_source_resets_total{state="join"}``), as streams/recovery.py does for
  faust's tables; what the broker lost is not in the new changelog for another worker.

A changelog record the broker refuses is retried until written (the join waits for it);
a failed write batch has the partition caught up from the changelog before its next one.

**Limitation: the changelog grows.** Records are never compacted (their keys are the
partition: compaction would lose rows; the topic must keep ``cleanup.policy=delete``), so
a partition read from the start (a worker that never had it) replays every step ever
written. Every row lives at most the join window plus the dedup retention (then it is
purged), so only the records of that last stretch matter: a snapshot of the store with its
changelog offset, or time retention a safe margin above window + retention, would bound
recovery. Left as a follow-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from streams.events import (
    INTERACTIONS_TOPIC,
    PROCESSING_ERROR,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    dead_letter,
    interaction_records,
)

if TYPE_CHECKING:
    from streams.settings import WorkerSettings

logger = logging.getLogger(__name__)

CHANGELOG: Final = "join-state"  # the topic is f"{app_id}-join-state"
OFFSETS_KEY: Final = b"\x00offsets"
CHANGELOG_KEY: Final = b"\x00changelog"
ROWS_FROM: Final = b"\x01"  # every row key sorts after it, every reserved key before
RECORD_BYTES: Final = 256 << 10  # a record's writes (escaped, at most ~2.2x in JSON)
SOURCES: Final = (REVIEWS_TOPIC, RATINGS_TOPIC)
# RocksDB memory (streams/tables.py's TABLE_ROCKSDB), the block cache shared by all stores
WRITE_BUFFER: Final = 4 << 20
WRITE_BUFFERS: Final = 2
BLOCK_CACHE: Final = 8 << 20
#: test hook: SIGKILL this process right after the changelog acks of the Nth commit
KILL_AFTER_ENV: Final = "DREX_TEST_KILL_AFTER_CHANGELOG"
_RETRY_MAX: Final = 30.0

Writes = dict[bytes, bytes | None]  # None: delete
Records = tuple[int, list[tuple[int, bytes]]]  # a partition, (offset, value) records of it


def changelog_topic(app_id: str) -> str:
    """The join's changelog topic of app ``app_id``."""
    return f"{app_id}-{CHANGELOG}"


def encode_records(
    writes: Mapping[bytes, bytes | None], offsets: Mapping[str, int], limit: int = RECORD_BYTES
) -> list[bytes]:
    """A step's writes and next offsets of one partition as changelog record values."""
    chunks: list[dict[str, str | None]] = [{}]
    size = 0
    for key, value in writes.items():
        n = len(key) + (0 if value is None else len(value))
        if chunks[-1] and size + n > limit:
            chunks.append({})
            size = 0
        chunks[-1][key.decode("latin-1")] = None if value is None else value.decode("latin-1")
        size += n
    if len(chunks) == 1:
        return [orjson.dumps({"w": chunks[0], "o": dict(offsets)})]
    group = int.from_bytes(os.urandom(6), "big")
    out = [orjson.dumps({"w": c, "g": group, "more": True}) for c in chunks[:-1]]
    return [*out, orjson.dumps({"w": chunks[-1], "o": dict(offsets), "g": group})]


def decode_record(raw: bytes) -> tuple[Writes, dict[str, int], int | None, bool]:
    """``(writes, offsets, group, more)`` of a changelog record value."""
    doc = orjson.loads(raw)
    writes: Writes = {
        k.encode("latin-1"): None if v is None else v.encode("latin-1") for k, v in doc["w"].items()
    }
    offsets = {str(t): int(o) for t, o in (doc.get("o") or {}).items()}
    return writes, offsets, doc.get("g"), bool(doc.get("more"))


class Changelog(Protocol):
    """Where the join's changelog records go and are read back from."""

    async def append(self, partition: int, values: list[bytes]) -> int:
        """Write ``values`` to ``partition`` in order; the offset of the last, once acked."""
        ...

    async def ends(self, partitions: list[int]) -> dict[int, int]:
        """The next offset to be written to each partition (its true end)."""
        ...

    def read(self, ranges: dict[int, tuple[int, int]]) -> AsyncIterator[Records]:
        """The records ``[start, end)`` of each partition, as ``(partition, [(offset,
        value)])`` batches (each partition's in order)."""
        ...


class MemoryChangelog:
    """A :class:`Changelog` in memory (tests)."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[bytes]] = {}

    async def append(self, partition: int, values: list[bytes]) -> int:
        log = self.partitions.setdefault(partition, [])
        log += values
        return len(log) - 1

    async def ends(self, partitions: list[int]) -> dict[int, int]:
        return {p: len(self.partitions.get(p, [])) for p in partitions}

    async def read(self, ranges: dict[int, tuple[int, int]]) -> AsyncIterator[Records]:
        for p, (start, end) in ranges.items():
            log = self.partitions.get(p, [])
            yield p, [(o, log[o]) for o in range(max(start, 0), min(end, len(log)))]


class KafkaChangelog:
    """The changelog topic: written through faust's producer (``topic``, a raw faust topic),
    read with an aiokafka consumer of its own (no group), assigned what it recovers."""

    def __init__(self, topic: Any, name: str, settings: WorkerSettings) -> None:
        self.topic, self.name, self.settings = topic, name, settings
        self._consumer: Any = None

    async def append(self, partition: int, values: list[bytes]) -> int:
        key = str(partition).encode()
        sent = [await self.topic.send(key=key, value=v, partition=partition) for v in values]
        metadata = await asyncio.gather(*sent)
        return int(metadata[-1].offset)

    async def _started(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            from streams.producer import bootstrap_servers

            consumer = AIOKafkaConsumer(
                bootstrap_servers=",".join(bootstrap_servers(self.settings.broker)),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=50,  # Tansu waits it out at a partition's end
                client_id="drex-join-state",
                **self.settings.aiokafka_options(),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def ends(self, partitions: list[int]) -> dict[int, int]:
        from aiokafka import TopicPartition

        from streams.compat import tansu_end_offsets

        consumer = await self._started()
        tps = [TopicPartition(self.name, p) for p in partitions]
        ends = await tansu_end_offsets(consumer, tps)
        return {tp.partition: int(ends[tp]) for tp in tps}

    async def read(self, ranges: dict[int, tuple[int, int]]) -> AsyncIterator[Records]:
        from aiokafka import TopicPartition

        consumer = await self._started()
        tps = {TopicPartition(self.name, p): (start, end) for p, (start, end) in ranges.items()}
        consumer.assign(list(tps))
        for tp, (start, _) in tps.items():
            consumer.seek(tp, start)
        stalled = time.monotonic() + 60
        while left := [tp for tp, (_, end) in tps.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(*left, timeout_ms=500)
            for tp, batch in batches.items():
                end = tps[tp][1]
                stalled = time.monotonic() + 60
                yield tp.partition, [(r.offset, r.value) for r in batch if r.offset < end]
            if time.monotonic() > stalled:
                raise TimeoutError(
                    f"{self.name} {sorted(t.partition for t in left)}: no records "
                    f"for 60 s before their ends"
                )
        consumer.assign([])

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


async def deliver(step: Any, now: float, interactions: Any, dead_letters: Any) -> None:
    """The first part of a join step's commit (a streams.agents.join.JoinStep): send the
    interactions, await their acks, send the dead letters, count the outcomes. Raises
    nothing: a refused interaction is a dead letter itself (topic ``interactions``)."""
    from streams import metrics

    letters = list(step.dead_letters)

    def refused(emission: Any, err: BaseException) -> None:
        logger.error("interaction of %r refused: %r", emission.event.user_id[:100], err)
        raw = emission.event.dumps()
        letters.append((PROCESSING_ERROR, dead_letter(raw, INTERACTIONS_TOPIC, err, now)))

    emits = step.emits
    sent: list[tuple[list[Any], Any]] = []
    # rating-only interactions travel many to a record (streams.events.interaction_records)
    for start, stop, value in interaction_records([e.event for e in emits]):
        group = emits[start:stop]
        try:  # MessageSizeTooLargeError, say, is raised by send itself
            future = await interactions.send(key=group[0].event.user_id.encode(), value=value)
            sent.append((group, future))
        except Exception as err:
            for e in group:
                refused(e, err)
    # acknowledged before the rows that record them are written
    acks = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
    for (group, _), ack in zip(sent, acks, strict=True):
        if isinstance(ack, asyncio.CancelledError):
            raise ack
        if isinstance(ack, BaseException):
            for e in group:
                refused(e, ack)
    for reason, letter in letters:
        try:
            await dead_letters.send(value=letter)
        except Exception:
            logger.exception("a dead letter (%s) could not be sent: %r", reason, letter[:500])
        metrics.DEAD_LETTERS.labels(reason).inc()
    for outcome, count in step.outcomes.items():
        metrics.JOIN_OUTCOMES.labels(outcome).inc(count)


class PartitionRows(MutableMapping[bytes, bytes]):
    """One partition's rows in its store, the reserved keys left out (the Joiner's view)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def get(self, key: bytes, default: Any = None) -> Any:
        value = self._db.get(key)
        return default if value is None else value

    def __getitem__(self, key: bytes) -> bytes:
        value = self._db.get(key)
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        if self._db.get(key) is None:
            raise KeyError(key)
        self._db.delete(key)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._db.keys(from_key=ROWS_FROM))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def rows(self) -> Iterator[tuple[bytes, bytes]]:
        """Every row, in one scan (``items()`` would read each value again)."""
        return iter(self._db.items(from_key=ROWS_FROM))


class _Steps:
    """Changelog records of one partition, put back together into steps (groups)."""

    def __init__(self, state: JoinState, partition: int) -> None:
        self.state, self.partition = state, partition
        self.group: int | None = None
        self.pending: Writes = {}
        self.applied = 0

    def feed(self, offset: int, raw: bytes) -> None:
        try:
            writes, offsets, group, more = decode_record(raw)
        except Exception:
            logger.exception(
                "join-state record %d of partition %d is unreadable; skipped",
                offset,
                self.partition,
            )
            return
        if self.pending and group != self.group:
            logger.warning(
                "join-state partition %d: an incomplete step before offset %d "
                "(its writer stopped mid-step) is dropped",
                self.partition,
                offset,
            )
            self.pending = {}
        if more:
            self.group = group
            self.pending.update(writes)
            return
        self.pending.update(writes)
        self.state._write(self.partition, self.pending, offsets, offset)
        self.pending, self.group = {}, None
        self.applied += 1


class JoinState:
    """The join's rows and source offsets, one RocksDB per source partition under
    ``root``, changelogged to ``changelog`` (module docstring)."""

    def __init__(self, root: Path, changelog: Changelog) -> None:
        self.root = Path(root)
        self.changelog = changelog
        self._dbs: dict[int, Any] = {}
        self._rows: dict[int, PartitionRows] = {}
        self._offsets: dict[int, dict[str, int]] = {}  # partition -> topic -> next offset
        self._changelog_at: dict[int, int] = {}  # partition -> last record held (-1: none)
        self._ready: set[int] = set()
        self._cache: Any = None
        self._commits = 0
        kill = os.environ.get(KILL_AFTER_ENV, "")
        self._kill_after = int(kill) if kill.strip() else 0

    # --- the local stores -------------------------------------------------------------

    def rows(self, partition: int) -> PartitionRows:
        """The rows of ``partition`` (opening its store the first time)."""
        if partition not in self._rows:
            self._open(partition)
        return self._rows[partition]

    def _open(self, partition: int) -> None:
        import rocksdict

        if self._cache is None:
            self._cache = rocksdict.Cache(BLOCK_CACHE)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER)
        options.set_max_write_buffer_number(WRITE_BUFFERS)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_bloom_filter(10, True)
        options.set_block_based_table_factory(table)
        path = self.root / f"p{partition}"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = rocksdict.Rdict(str(path), options)
        raw_offsets = db.get(OFFSETS_KEY)
        raw_at = db.get(CHANGELOG_KEY)
        self._dbs[partition] = db
        self._rows[partition] = PartitionRows(db)
        self._offsets[partition] = {} if raw_offsets is None else orjson.loads(raw_offsets)
        self._changelog_at[partition] = -1 if raw_at is None else int(raw_at)

    def next_offset(self, topic: str, partition: int) -> int:
        """The first offset of ``topic``'s ``partition`` not applied yet (0: none stored)."""
        if partition not in self._offsets:
            self._open(partition)
        return self._offsets[partition].get(topic, 0)

    def applied(self, topic: str, partition: int, offset: int) -> bool:
        """Whether ``offset`` is below the next offset stored (applied already, unless the
        topic started again: the module docstring)."""
        return offset < self.next_offset(topic, partition)

    def changelog_offset(self, partition: int) -> int:
        """The last changelog record the local store of ``partition`` holds (-1: none)."""
        if partition not in self._changelog_at:
            self._open(partition)
        return self._changelog_at[partition]

    def _write(
        self,
        partition: int,
        writes: Mapping[bytes, bytes | None],
        offsets: Mapping[str, int],
        changelog_offset: int,
    ) -> None:
        """One atomic write batch: rows, next offsets, the changelog record's offset."""
        import rocksdict

        if partition not in self._dbs:
            self._open(partition)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        merged = {**self._offsets[partition], **offsets}
        if offsets:
            batch.put(OFFSETS_KEY, orjson.dumps(merged))
        batch.put(CHANGELOG_KEY, str(changelog_offset).encode())
        self._dbs[partition].write(batch)
        self._offsets[partition] = merged
        self._changelog_at[partition] = changelog_offset

    # --- the step's commit ----------------------------------------------------------

    async def commit(
        self,
        writes: Mapping[int, Mapping[bytes, bytes | None]],
        offsets: Mapping[int, Mapping[str, int]],
    ) -> None:
        """Changelog first (acknowledged), then one write batch per partition."""
        parts = sorted(set(writes) | set(offsets))
        if not parts:
            return
        values = {p: encode_records(writes.get(p, {}), offsets.get(p, {})) for p in parts}
        acked = await asyncio.gather(*(self._append(p, values[p]) for p in parts))
        self._commits += 1
        if self._kill_after and self._commits >= self._kill_after:
            logger.warning(
                "%s=%d: killing this process after the changelog acks",
                KILL_AFTER_ENV,
                self._kill_after,
            )
            os.kill(os.getpid(), signal.SIGKILL)
        for p, offset in zip(parts, acked, strict=True):
            try:
                self._write(p, writes.get(p, {}), offsets.get(p, {}), offset)
            except Exception:  # the changelog has it: catch up from there before going on
                logger.exception(
                    "join-state write batch of partition %d failed; the partition "
                    "is caught up from its changelog",
                    p,
                )
                self._ready.discard(p)

    async def _append(self, partition: int, values: list[bytes]) -> int:
        """``values`` appended, retried until the broker acknowledges them."""
        wait = 0.5
        while True:
            try:
                return await self.changelog.append(partition, values)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                logger.error(
                    "join-state changelog of partition %d: %r; again in %.1f s",
                    partition,
                    err,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, _RETRY_MAX)

    # --- recovery -------------------------------------------------------------------

    def release(self, partitions: Iterable[int]) -> None:
        """``partitions`` moved (assigned or revoked): catch up before their next use."""
        self._ready.difference_update(partitions)

    async def ensure(self, partition: int) -> bool:
        """:meth:`ensure_all` of one partition: True when it was caught up now."""
        return bool(await self.ensure_all([partition]))

    async def ensure_all(self, partitions: Iterable[int]) -> set[int]:
        """Bring each partition's store up to its changelog's end, once after each
        assignment; the partitions that were caught up now (the Joiner must re-read
        their rows). Retried until the changelog can be read."""
        todo = sorted(set(partitions) - self._ready)
        if not todo:
            return set()
        wait = 0.5
        while True:
            try:
                await self._catch_up(todo)
                break
            except asyncio.CancelledError:
                raise
            except Exception as err:
                logger.error(
                    "join-state recovery of partitions %s: %r; again in %.1f s", todo, err, wait
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, _RETRY_MAX)
        self._ready.update(todo)
        return set(todo)

    async def _catch_up(self, partitions: list[int]) -> None:
        ends = await self.changelog.ends(partitions)
        ranges: dict[int, tuple[int, int]] = {}
        for p in partitions:
            at, end = self.changelog_offset(p), ends[p]
            if at >= 0 and at >= end:
                self._reanchor(p, at, end)
                at = -1
            if at + 1 < end:
                ranges[p] = (at + 1, end)
        if not ranges:
            return
        steps = {p: _Steps(self, p) for p in ranges}
        started = time.monotonic()
        async for p, records in self.changelog.read(ranges):
            for offset, raw in records:
                steps[p].feed(offset, raw)
        logger.info(
            "join-state: %s read from the changelog in %.1f s",
            ", ".join(
                f"partition {p} [{a}, {b}) {steps[p].applied} steps" for p, (a, b) in ranges.items()
            ),
            time.monotonic() - started,
        )

    def _reanchor(self, partition: int, at: int, end: int) -> None:
        from streams import metrics

        db = self._dbs[partition]
        db.delete(OFFSETS_KEY)
        db.put(CHANGELOG_KEY, b"-1")
        self._offsets[partition] = {}
        self._changelog_at[partition] = -1
        metrics.SOURCE_RESETS.labels("join").inc()
        logger.warning(
            "join-state changelog partition %d starts again (the broker restarted empty, or "
            "the topic was made again): the local store held up to offset %d, the changelog "
            "ends at %d. Rows kept, stored source offsets dropped; the new changelog is read "
            "on top (rows from before are not in it for another worker)",
            partition,
            at,
            end,
        )

    def apply_records(self, partition: int, records: Iterable[tuple[int, bytes]]) -> int:
        """Apply changelog ``(offset, value)`` records in order; the steps applied."""
        steps = _Steps(self, partition)
        for offset, raw in records:
            steps.feed(offset, raw)
        return steps.applied

    async def aclose(self) -> None:
        """Close the changelog's reader and every store (the join agent stops)."""
        close = getattr(self.changelog, "close", None)
        if close is not None:
            try:
                await close()
            except Exception:
                logger.exception("closing the join-state changelog reader failed")
        self.close()

    def close(self) -> None:
        """Close every store (they open again on next use)."""
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()
        self._rows.clear()
        self._offsets.clear()
        self._changelog_at.clear()
        self._ready.clear()
