"""drex_store: one key-value interface, two backends that behave alike; the learner
store's layout; the torch-free import boundary."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from drex_model.formats import (
    VECTORS,
    EntityRow,
    FormatError,
    keywords_from_bytes,
    keywords_to_bytes,
    word_row_from_bytes,
    word_row_to_bytes,
)
from drex_model.reasons import Quote
from drex_model.text import TextEncoder
from drex_store.kv import KeyValueStore, MemoryStore, RocksStore, StoreLocked, WriteBatch
from drex_store.learner import BatchWrite, LearnerStore, StoreInfo

if TYPE_CHECKING:
    from drex_model.text import TextEncoder


@pytest.fixture(params=["memory", "rocksdb"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueStore]:
    store: KeyValueStore = (
        MemoryStore() if request.param == "memory" else RocksStore.open(tmp_path / "db")
    )
    yield store
    store.close()


def test_both_backends_get_scan_and_write_batches_alike(kv: KeyValueStore) -> None:
    batch = WriteBatch()
    for key in (b"b:2", b"a:1", b"b:1", b"c:1", b"b:3"):
        batch.put(key, key.upper())
    batch.delete(b"b:3")
    batch.put(b"a:1", b"again")  # the last operation on a key wins
    kv.write(batch)
    assert kv.get(b"a:1") == b"again" and kv.get(b"b:3") is None and kv.get(b"zz") is None
    assert list(kv.scan(b"b:")) == [(b"b:1", b"B:1"), (b"b:2", b"B:2")]
    assert [k for k, _ in kv.scan(b"")] == [b"a:1", b"b:1", b"b:2", b"c:1"]
    gone = WriteBatch()
    gone.delete(b"b:1")
    gone.delete(b"never")
    kv.write(gone)
    assert [k for k, _ in kv.scan(b"b")] == [b"b:2"]
    kv.put(b"b:0", b"zero")
    kv.delete(b"b:2")
    assert list(kv.scan(b"b")) == [(b"b:0", b"zero")]


def test_a_held_rocksdb_store_is_refused_after_the_wait(tmp_path: Path) -> None:
    held = RocksStore.open(tmp_path / "db")
    try:
        with pytest.raises(StoreLocked, match="held by another process"):
            RocksStore.open(tmp_path / "db", wait=0.3)
    finally:
        held.close()


def row(key: str, review: str | None) -> EntityRow:
    vectors = np.arange(len(VECTORS) * 4, dtype=np.float32).reshape(len(VECTORS), 4)
    return EntityRow(key, vectors, has_pending=review is not None, pending_key=review, count=2)


def test_the_learner_store_keeps_a_batch_whole_and_sweeps_what_nothing_needs() -> None:
    store = LearnerStore.in_memory()
    assert store.info() == StoreInfo() and store.dense() is None and store.encoder() is None
    write = BatchWrite(
        info=StoreInfo(offset=7, applied=2, batches=1, step=0, updated_at=1.0),
        rows={"users": [row("ann", "r1")], "items": [row("amp", "r1"), row("cab", None)]},
        keywords={"users": {"ann": ({"tone": 1.0}, {"warm": 0.5})}},
        applied_ids=["x1", "x2"],
        dense=None,
        representations={"items": {"amp": np.ones(4, dtype=np.float32)}},
        reviews={"r1": b"blob", "old": b"unused"},
        encoder={"name": "tiny", "hidden_size": 4},
    )
    store.commit(write)
    assert store.info().offset == 7 and store.encoder() == {"name": "tiny", "hidden_size": 4}
    assert store.applied(["x1", "x3"]) == {"x1"}
    assert store.counts("items") == {"amp": 2, "cab": 2}
    assert store.missing_reviews(["r1", "r2"]) == {"r2"}
    # stored as learned, shown with the pending words
    assert list(store.keyword_records("users")) == [("ann", {"tone": 1.0}, {"warm": 0.5}, [])]
    assert store.keyword_profiles("users") == {"ann": {"tone": 1.0, "warm": 0.5}}
    assert store.changes(0) == [
        {
            "batch": 1,
            "users": ["ann"],
            "items": ["amp", "cab"],
            "cooccurrence": [],
            "words": [],
            "categories": [],
            "dense": False,
        }
    ]
    assert store.gc(applied_older_than=0.0) == (1, 0)  # "old" is referenced by no row
    assert store.review("r1") == b"blob" and store.review("old") is None


def test_vocabulary_rows_and_quotes_round_trip_and_the_change_record_names_the_words() -> None:
    store = LearnerStore.in_memory()
    quote = Quote("The warm tone fills the room.", 5.0, ("warm", "tone", "fill", "room"))
    info = StoreInfo(offset=3, applied=4, batches=1)
    store.commit(
        BatchWrite(
            info=info,
            rows={"users": [row("ann", None)], "items": [row("amp", None), row("cab", None)]},
            keywords={
                "users": {"ann": ({"tone": 1.0}, {})},
                "items": {"amp": ({"tone": 0.5}, {"warm": 0.2}), "cab": ({}, {})},
            },
            applied_ids=[],
            dense=None,
            quotes={"amp": [quote], "cab": []},
            words={"tone": [1.5, 2.0, 9.0], "warm": [0.2, 0.0, 0.0]},
            words_mass=1.7,
        )
    )
    assert list(store.keyword_records("items")) == [
        ("amp", {"tone": 0.5}, {"warm": 0.2}, [quote]),
        ("cab", {}, {}, []),
    ]
    assert list(store.keyword_records("users")) == [("ann", {"tone": 1.0}, {}, [])]
    assert dict(store.vocabulary()) == {"tone": [1.5, 2.0, 9.0], "warm": [0.2, 0.0, 0.0]}
    assert list(store.vocabulary(["warm", "never"])) == [("warm", [0.2, 0.0, 0.0])]
    assert store.vocabulary_mass() == 1.7
    assert store.changes(0)[0]["words"] == ["tone", "warm"]  # type: ignore[index]
    # a batch that changed no word leaves the rows and the mass alone
    store.commit(
        BatchWrite(
            info=StoreInfo(offset=4, applied=5, batches=2),
            rows={},
            keywords={},
            applied_ids=[],
            dense=None,
        )
    )
    assert store.changes(1)[0]["words"] == []  # type: ignore[index]
    assert store.vocabulary_mass() == 1.7 and len(dict(store.vocabulary())) == 2


def test_keyword_records_without_quotes_and_damaged_vocabulary_rows() -> None:
    # written before items kept quotes: read as none
    old = b'{"learned":{"tone":1.0},"pending":{}}'
    assert keywords_from_bytes(old) == ({"tone": 1.0}, {}, [])
    assert keywords_to_bytes({"tone": 1.0}, {}) == old  # a user's record has no quotes
    quote = Quote("Easy setup for a beginner.", 4.0, ("easy", "setup", "beginner"))
    assert keywords_from_bytes(keywords_to_bytes({}, {}, [quote]))[2] == [quote]
    row = [0.1 + 0.2, 3.0, 13.0]  # float64 exactly
    assert word_row_from_bytes(word_row_to_bytes(row)) == row
    with pytest.raises(FormatError):
        word_row_from_bytes(b"\x02" + word_row_to_bytes(row)[1:])
    with pytest.raises(FormatError):
        word_row_from_bytes(word_row_to_bytes(row)[:-1])


def test_serving_imports_no_torch_and_nothing_from_streams() -> None:
    code = (
        "import sys, serving.server, serving.cli, serving.replica, drex_store.learner;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'streams'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_learner_restored_from_its_store_predicts_alike_and_checks_the_encoder() -> None:
    from drex_model.checkpoint import CheckpointError
    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig
    from drex_model.types import Interaction
    from streams.state import batch_write, next_info, restore

    config = DReXConfig.for_variant("drex", use_text=False, dim=8, dropout=0.0, step_size=4)
    source = DReXLearner(config, seed=0)
    data = [Interaction(f"u{n % 5}", f"i{n % 3}", float(1 + n % 5), None, n) for n in range(30)]
    source.learn_many(data)
    store = LearnerStore.in_memory()
    changed = {"users": sorted(source.users.ids), "items": sorted(source.items.ids)}
    info = next_info(StoreInfo(), offset=29, applied=30, step=source.step)
    identity = {"name": "tiny", "hidden_size": 4}
    store.commit(batch_write(store, source, info, changed, [], dense=True, encoder=identity))
    copy = DReXLearner(config, seed=1)
    assert restore(store, copy, identity).applied == 30
    users, items = ["u0", "u4", "new"], ["i0", "i2", "new"]
    np.testing.assert_allclose(copy.score_matrix(users, items), source.score_matrix(users, items))
    # the ranking's own state (co-occurrence, each user's items in order) came back too
    assert copy.blend.cooccurrence > 0
    np.testing.assert_allclose(
        copy.ranking_scores(users, items), source.ranking_scores(users, items)
    )
    assert copy.seen_in_order("u0") == source.seen_in_order("u0")
    with pytest.raises(CheckpointError, match="another text encoder"):
        restore(store, DReXLearner(config, seed=1), {**identity, "name": "other"})


def test_a_learner_restored_from_its_store_explains_alike(tiny_encoder: TextEncoder) -> None:
    """After each micro-batch written as the worker writes it (only the changed rows,
    words and quotes), a learner restored from the store has the same vocabulary,
    quotes and profiles, and so gives every pair the same Reason; and it keeps
    learning into the same explanations."""
    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig
    from streams.state import batch_write, next_info, restore
    from tests.unit.quotable import reviewed

    config = DReXConfig.for_variant(
        "drex",
        dim=8,
        dropout=0.0,
        step_size=4,
        encoder_dim=tiny_encoder.hidden_size,
        keyword_decay=0.8,
    )
    identity = tiny_encoder.identity
    source = DReXLearner(config, encoder=tiny_encoder, seed=0)
    store = LearnerStore.in_memory()
    info = StoreInfo()
    for n in range(4):
        data = reviewed(10, 10 * n, seed=n)
        source.learn_many(data)
        changed = {side: sorted(ids) for side, ids in source.changed.items()}
        info = next_info(info, offset=10 * n + 9, applied=len(data), step=source.step)
        store.commit(batch_write(store, source, info, changed, [], dense=True, encoder=identity))
    assert not source.vocabulary.changed and not source.quotes.changed  # all written
    copy = DReXLearner(config, encoder=tiny_encoder, seed=1)
    restore(store, copy, identity)
    assert copy.vocabulary.words == source.vocabulary.words
    assert copy.vocabulary.mass == source.vocabulary.mass and not copy.vocabulary.changed
    users, items = sorted(source.users.ids), sorted(source.items.ids)
    assert {i: copy.quotes.get(i) for i in items} == {i: source.quotes.get(i) for i in items}
    reasons = [source.explain(user, items) for user in users]
    assert [copy.explain(user, items) for user in users] == reasons
    assert any(r.quote for rs in reasons for r in rs) and any(
        r.cautions for rs in reasons for r in rs
    )
    more = reviewed(10, 40, seed=9)
    source.learn_many(more)
    copy.learn_many(more)
    assert [copy.explain(user, items) for user in users] == [
        source.explain(user, items) for user in users
    ]


def test_items_categories_are_written_with_their_batch_and_named_in_its_change_record() -> None:
    store = LearnerStore.in_memory()
    first = BatchWrite(
        info=StoreInfo(offset=1, applied=1, batches=1),
        rows={},
        keywords={},
        applied_ids=["x1"],
        dense=None,
        categories={"amp": ["Amplifiers", "Tubes"], "cab": ["Cabinets"]},
    )
    store.commit(first)
    assert dict(store.categories()) == {"amp": ["Amplifiers", "Tubes"], "cab": ["Cabinets"]}
    later = BatchWrite(
        info=StoreInfo(offset=2, applied=2, batches=2),
        rows={},
        keywords={},
        applied_ids=["x2"],
        dense=None,
        categories={"amp": ["Amplifiers"]},  # the item's categories as now given
    )
    store.commit(later)
    assert dict(store.categories(["amp", "nope"])) == {"amp": ["Amplifiers"]}
    assert [c["categories"] for c in store.changes(0) or []] == [["amp", "cab"], ["amp"]]

