"""The join's own state (streams/join_state.py) over real rocksdict stores in tmp_path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC
from streams.join_state import (
    CHANGELOG_KEY,
    OFFSETS_KEY,
    JoinState,
    MemoryChangelog,
    decode_record,
    encode_records,
)

ROW_A, ROW_B = b'["ann","amp"]', b'[0,"r1"]'


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_commit_writes_the_changelog_then_rows_and_offsets_together(tmp_path: Path) -> None:
    log = MemoryChangelog()
    state = JoinState(tmp_path, log)
    writes = {ROW_A: b'{"p":0}', ROW_B: b'{"p":0,"e":1}'}
    run(state.commit({0: writes}, {0: {REVIEWS_TOPIC: 8, RATINGS_TOPIC: 3}}))
    [record] = log.partitions[0]
    assert decode_record(record) == (writes, {REVIEWS_TOPIC: 8, RATINGS_TOPIC: 3}, None, False)
    assert dict(state.rows(0).rows()) == writes  # the reserved keys are not rows
    assert len(state.rows(0)) == 2 and sorted(state.rows(0)) == sorted(writes)
    assert state.changelog_offset(0) == 0
    assert state.next_offset(REVIEWS_TOPIC, 0) == 8 and state.next_offset(RATINGS_TOPIC, 0) == 3
    # a delete and a partition without writes, only offsets
    run(state.commit({0: {ROW_A: None}}, {0: {REVIEWS_TOPIC: 9}, 1: {RATINGS_TOPIC: 1}}))
    assert dict(state.rows(0).rows()) == {ROW_B: writes[ROW_B]}
    assert state.next_offset(RATINGS_TOPIC, 0) == 3  # kept: this step read none
    assert state.next_offset(RATINGS_TOPIC, 1) == 1 and len(state.rows(1)) == 0
    assert (state.changelog_offset(0), state.changelog_offset(1)) == (1, 0)


def test_a_reopened_state_has_its_rows_and_offsets(tmp_path: Path) -> None:
    state = JoinState(tmp_path, MemoryChangelog())
    run(state.commit({2: {ROW_A: b"{}"}}, {2: {REVIEWS_TOPIC: 5}}))
    state.close()
    again = JoinState(tmp_path, MemoryChangelog())
    assert again.rows(2).get(ROW_A) == b"{}"
    assert again.next_offset(REVIEWS_TOPIC, 2) == 5 and again.changelog_offset(2) == 0
    assert again.rows(2)[ROW_A] == b"{}" and ROW_B not in again.rows(2)
    assert (tmp_path / "p2").is_dir()
    again.close()


def test_the_skip_rule_drops_what_was_applied(tmp_path: Path) -> None:
    state = JoinState(tmp_path, MemoryChangelog())
    assert not state.applied(REVIEWS_TOPIC, 0, 0)  # nothing stored: nothing skipped
    run(state.commit({0: {}}, {0: {REVIEWS_TOPIC: 10}}))
    assert state.applied(REVIEWS_TOPIC, 0, 9)
    assert not state.applied(REVIEWS_TOPIC, 0, 10)
    assert not state.applied(RATINGS_TOPIC, 0, 0)  # per topic
    assert not state.applied(REVIEWS_TOPIC, 1, 0)  # per partition


def test_recovery_applies_changelog_records_in_order(tmp_path: Path) -> None:
    records = [
        encode_records({ROW_A: b"1"}, {REVIEWS_TOPIC: 1}),
        encode_records({ROW_A: b"2", ROW_B: b"x"}, {RATINGS_TOPIC: 4}),
        encode_records({ROW_B: None}, {REVIEWS_TOPIC: 2}),
    ]
    state = JoinState(tmp_path, MemoryChangelog())
    applied = state.apply_records(3, [(o, r) for o, [r] in enumerate(records, start=10)])
    assert applied == 3
    assert dict(state.rows(3).rows()) == {ROW_A: b"2"}
    assert state.next_offset(REVIEWS_TOPIC, 3) == 2 and state.next_offset(RATINGS_TOPIC, 3) == 4
    assert state.changelog_offset(3) == 12


def test_a_big_step_is_one_group_applied_only_when_complete(tmp_path: Path) -> None:
    writes = {b'["u%d","i"]' % n: b"v" * 100 for n in range(10)}
    group = encode_records(writes, {REVIEWS_TOPIC: 7}, limit=250)
    assert len(group) == 5
    assert all(decode_record(r)[3] for r in group[:-1]) and not decode_record(group[-1])[3]
    state = JoinState(tmp_path, MemoryChangelog())
    # a writer that stopped mid-step, then a complete step by its successor
    state.apply_records(0, enumerate(group[:3]))
    assert len(state.rows(0)) == 0 and state.changelog_offset(0) == -1
    later = encode_records({ROW_A: b"a"}, {RATINGS_TOPIC: 1})
    state.apply_records(0, [(0, group[0]), (1, group[1]), (2, later[0])])
    assert dict(state.rows(0).rows()) == {ROW_A: b"a"}  # the incomplete one is dropped
    state.apply_records(0, enumerate(group, start=3))
    assert len(state.rows(0)) == 11 and state.changelog_offset(0) == 7
    assert state.next_offset(REVIEWS_TOPIC, 0) == 7


def test_ensure_catches_up_from_the_changelog_after_a_move(tmp_path: Path) -> None:
    """Worker a writes steps; worker b (its own store) takes the partition over, a gets it
    back later and reads only what b wrote."""
    log = MemoryChangelog()
    a = JoinState(tmp_path / "a", log)
    run(a.ensure(0))
    run(a.commit({0: {ROW_A: b"1"}}, {0: {REVIEWS_TOPIC: 1}}))
    b = JoinState(tmp_path / "b", log)
    assert run(b.ensure(0)) is True and run(b.ensure(0)) is False
    assert dict(b.rows(0).rows()) == {ROW_A: b"1"} and b.applied(REVIEWS_TOPIC, 0, 0)
    run(b.commit({0: {ROW_B: b"2", ROW_A: None}}, {0: {REVIEWS_TOPIC: 5}}))
    a.release([0])
    assert run(a.ensure(0)) is True
    assert dict(a.rows(0).rows()) == {ROW_B: b"2"} and a.next_offset(REVIEWS_TOPIC, 0) == 5
    assert a.changelog_offset(0) == b.changelog_offset(0) == 1
    a.close()
    b.close()


def test_a_changelog_that_starts_again_keeps_rows_and_drops_offsets(tmp_path: Path) -> None:
    """The embedded broker restarted empty: its new source topics start at offset 0."""
    state = JoinState(tmp_path, MemoryChangelog())
    run(state.commit({0: {ROW_A: b"1"}}, {0: {REVIEWS_TOPIC: 50}}))
    run(state.commit({0: {ROW_B: b"2"}}, {0: {REVIEWS_TOPIC: 60}}))
    state.close()
    fresh = JoinState(tmp_path, MemoryChangelog())
    assert run(fresh.ensure(0)) is True
    assert not fresh.applied(REVIEWS_TOPIC, 0, 0)
    assert fresh.changelog_offset(0) == -1 and len(fresh.rows(0)) == 2
    run(fresh.commit({0: {}}, {0: {REVIEWS_TOPIC: 1}}))
    assert fresh.changelog_offset(0) == 0 and fresh.applied(REVIEWS_TOPIC, 0, 0)


def test_a_changelog_write_is_retried_until_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.join_state.asyncio.sleep", _no_sleep)
    log = MemoryChangelog()
    failures = [RuntimeError("broker away"), RuntimeError("still away")]
    append = log.append

    async def flaky(partition: int, values: list[bytes]) -> int:
        if failures:
            raise failures.pop(0)
        return await append(partition, values)

    log.append = flaky  # type: ignore[method-assign]
    state = JoinState(tmp_path, log)
    run(state.commit({0: {ROW_A: b"1"}}, {0: {REVIEWS_TOPIC: 1}}))
    assert len(log.partitions[0]) == 1 and state.rows(0).get(ROW_A) == b"1"


def test_reserved_keys_sort_before_every_row_key() -> None:
    assert max(OFFSETS_KEY, CHANGELOG_KEY) < b"\x01" < min(ROW_A, ROW_B)
    record = orjson.loads(encode_records({b"[\xff]": b"\xe9"}, {})[0])
    assert record == {"w": {"[\xff]": "\xe9"}, "o": {}}  # any bytes, through latin-1


async def _no_sleep(seconds: float) -> None:
    return None
