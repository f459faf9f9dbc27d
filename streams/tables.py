"""Topic and table declarations over raw bytes, and the one faust workaround they need.

Everything drex passes through Kafka is bytes it encodes itself (orjson, float32 arrays):
faust's value decoding would otherwise crash an agent on the first malformed message
(``value_type=dict``) or silently skip it, where drex wants a dead letter. A faust
``Topic`` needs its serializers named ("raw"); a ``Table`` picks "raw" from
``value_type=bytes`` by itself.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final


def raw_topic(app: Any, *names: str, partitions: int | None = None) -> Any:
    """A topic (or several read as one) whose keys and values are bytes, untouched."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


# RocksDB memory of each table partition. faust's defaults (3 memtables of 64 MiB and a
# 2 GiB block cache per partition) let a worker grow by hundreds of MiB as the join's
# table (now streams/join_state.py, which keeps these sizes) filled memtables; these bound
# each partition to ~16 MiB (benchmarks/soak_bench.py).
TABLE_ROCKSDB: Final = {
    "write_buffer_size": 4 << 20,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 << 20,
}


def bytes_table(app: Any, name: str, partitions: int, help: str = "") -> Any:
    """A RocksDB table (rocksdict driver) of bytes -> bytes, changelogged."""
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,  # -> the "raw" serializer for both
        partitions=partitions,
        options={"driver": "rocksdict", **TABLE_ROCKSDB},
        help=help,
    )


@contextlib.contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Let table writes happen while ``event`` is not the stream's current event.

    faust tables accept writes only while an event is current (the changelog partition
    and the local RocksDB partition come from it). A ``take_events`` body runs after
    faust has moved past the batch's events; the caller names the event whose partition
    the writes belong to. This sets faust's private ``current_event`` context variable.
    """
    from faust.streams import _current_event

    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def write_tables(tables: Sequence[Any], rows: Sequence[Mapping[str, bytes]], event: Any) -> None:
    """Write ``rows[n]`` (id -> value) into ``tables[n]``, as of ``event``
    (:func:`event_context`): one changelog record per id."""
    with event_context(event):
        for table, values in zip(tables, rows, strict=True):
            for key, value in values.items():
                table[key.encode()] = value
