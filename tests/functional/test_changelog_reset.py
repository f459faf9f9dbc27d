"""A table partition whose changelog restarted empty is re-anchored, not a crash loop
(streams/recovery.py, fix 3). No broker: the worker's own app and recovery, with the
consumer's offset answers and the table's store faked.

Before the fix faust's recovery raised ``ConsistencyError`` (stored offset above the
changelog's end) on every start after the broker came back empty.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.app import create_app
from streams.recovery import Recovery
from streams.settings import WorkerSettings


class Store:
    """The bit of faust's RocksDB store recovery touches."""

    def __init__(self) -> None:
        self.persisted: dict[TP, int] = {}

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset


class Consumer:
    """Offsets as the broker answers them: ``ends`` are next offsets to be written."""

    def __init__(self, ends: dict[TP, int]) -> None:
        self.ends = ends
        self.asked_highwaters = 0

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        self.asked_highwaters += 1
        return {tp: self.ends[tp] for tp in tps}


def test_a_changelog_that_restarted_empty_is_read_again_from_its_start(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env(
        {}, broker="kafka://127.0.0.1:9", state_dir=str(tmp_path), embedded=True
    )
    reset, kept, empty = (TP("drex-item-embeddings-changelog", p) for p in (0, 1, 2))
    ends = {reset: 0, kept: 10, empty: 0}

    async def scenario(title: str) -> tuple[Counter[TP], Store, Consumer]:
        app = create_app(settings).app  # in the running loop: faust's services bind to it
        recovery = app.tables.recovery
        assert isinstance(recovery, Recovery)
        store = Store()
        table: Any = SimpleNamespace(name="item-embeddings", data=store)
        for tp in ends:
            recovery.tp_to_table[tp] = table
            recovery.active_highwaters[tp] = ends[tp] - 1  # as faust builds them: end - 1
        consumer = Consumer(ends)
        # what each partition's local RocksDB says it has read (None: nothing stored)
        offsets: Counter[TP] = Counter({reset: 120, kept: 5})
        offsets[empty] = None  # type: ignore[assignment]
        await recovery._build_offsets(consumer, set(ends), offsets, title)  # type: ignore[arg-type]
        return offsets, store, consumer

    for title in ("active", "standby"):
        offsets, store, consumer = asyncio.run(scenario(title))
        assert offsets == {reset: -1, kept: 5, empty: -1}  # -1: read from offset 0
        assert store.persisted == {reset: -1}  # the next start finds it consistent too
        assert consumer.asked_highwaters == (0 if title == "active" else 1)
