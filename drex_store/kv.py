"""A small typed key-value interface with a RocksDB backend and a memory one.

Everything the learner keeps goes through :class:`KeyValueStore`: ``get``, ``put``,
``delete``, ``scan`` (by key prefix, in key order), and ``write`` of one
:class:`WriteBatch` (puts and deletes applied atomically). :class:`RocksStore` is
production (rocksdict, raw bytes, no pickle): a primary that one process holds, a
read-only view, or a *secondary* instance that follows the primary's log on
:meth:`RocksStore.catch_up`. :class:`MemoryStore` holds the same in a dict, for tests.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Protocol


class StoreLocked(RuntimeError):
    """Another process holds the store (it owns the learner right now)."""


class WriteBatch:
    """Puts and deletes to apply at once; the last operation on a key wins."""

    def __init__(self) -> None:
        self.operations: list[tuple[bytes, bytes | None]] = []  # value None: delete

    def __len__(self) -> int:
        return len(self.operations)

    def put(self, key: bytes, value: bytes) -> None:
        self.operations.append((key, value))

    def delete(self, key: bytes) -> None:
        self.operations.append((key, None))


class KeyValueStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key that starts with ``prefix``, in key order."""
        ...

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically: a reader sees all of it or none."""
        ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def catch_up(self) -> None:
        """(Followers) read what the writer has written since; others do nothing."""
        ...

    def close(self) -> None: ...


class _SingleWrites:
    """``put`` and ``delete`` as one-operation batches."""

    def write(self, batch: WriteBatch) -> None:
        raise NotImplementedError

    def put(self, key: bytes, value: bytes) -> None:
        batch = WriteBatch()
        batch.put(key, value)
        self.write(batch)

    def delete(self, key: bytes) -> None:
        batch = WriteBatch()
        batch.delete(key)
        self.write(batch)


class MemoryStore(_SingleWrites):
    """:class:`KeyValueStore` in memory (tests; nothing survives the process)."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []  # sorted

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys[bisect.bisect_left(self._keys, prefix) :]
        for key in list(keys):
            if not key.startswith(prefix):
                return
            yield key, self._data[key]

    def write(self, batch: WriteBatch) -> None:
        for key, value in batch.operations:
            if value is None:
                if self._data.pop(key, None) is not None:
                    del self._keys[bisect.bisect_left(self._keys, key)]
            else:
                if key not in self._data:
                    bisect.insort(self._keys, key)
                self._data[key] = value

    def catch_up(self) -> None:
        pass

    def close(self) -> None:
        pass


WRITE_BUFFER_BYTES: Final = 16 << 20


class RocksStore(_SingleWrites):
    """:class:`KeyValueStore` on RocksDB (rocksdict in raw mode)."""

    def __init__(self, db: Any, path: Path, fsync: bool = False) -> None:
        import rocksdict

        self._db = db
        self.path = path
        self._write_options = rocksdict.WriteOptions()
        self._write_options.sync = fsync

    @classmethod
    def open(
        cls, path: str | Path, fsync: bool = False, wait: float = 0.0, read_only: bool = False
    ) -> RocksStore:
        """Open (creating) the store; retry for ``wait`` seconds while another process
        holds it. Raises :class:`StoreLocked` when it stays locked."""
        import rocksdict

        where = Path(path)
        deadline = time.monotonic() + wait
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(not read_only)
        # 16 MiB memtables (RocksDB's default 64): a take writes ~10 MiB of reviews, and
        # each full memtable stays in the worker's memory until it is flushed
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        while True:
            try:
                if read_only:
                    access = rocksdict.AccessType.read_only()
                    return cls(rocksdict.Rdict(str(where), options, access_type=access), where)
                where.mkdir(parents=True, exist_ok=True)
                return cls(rocksdict.Rdict(str(where), options), where, fsync)
            except Exception as err:  # rocksdict raises a bare Exception for IO errors
                if "lock" not in str(err).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLocked(f"{where} is held by another process: {err}") from err
                time.sleep(0.2)

    @classmethod
    def open_secondary(cls, path: str | Path, secondary: str | Path) -> RocksStore:
        """A read-only follower of the store another process writes (``secondary`` is
        this follower's own folder); reads between two :meth:`catch_up` calls see one
        consistent state."""
        import rocksdict

        options = rocksdict.Options(raw_mode=True)
        options.set_max_open_files(-1)  # required of secondary instances
        access = rocksdict.AccessType.secondary(str(secondary))
        return cls(rocksdict.Rdict(str(path), options, access_type=access), Path(path))

    def get(self, key: bytes) -> bytes | None:
        raw = self._db.get(key)
        return None if raw is None else bytes(raw)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield bytes(key), bytes(value)

    def write(self, batch: WriteBatch) -> None:
        import rocksdict

        wb = rocksdict.WriteBatch(raw_mode=True)
        for key, value in batch.operations:
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        self._db.write(wb, self._write_options)

    def catch_up(self) -> None:
        self._db.try_catch_up_with_primary()

    def close(self) -> None:
        self._db.close()
