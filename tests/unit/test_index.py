"""ItemIndex: upserts replace, removes remove, search is exact, saves load back, and
concurrent searches survive concurrent updates."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from drex_store.index import ItemIndex, IVFItemIndex


def unit(dim: int, axis: int, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[axis] = scale
    return v


@pytest.fixture
def small() -> ItemIndex:
    index = ItemIndex(4)
    index.upsert(["a", "b", "c"], np.stack([unit(4, 0), unit(4, 1), unit(4, 2)]))
    return index


def test_search_orders_by_inner_product(small: ItemIndex) -> None:
    query = np.array([0.1, 0.5, 0.3, 0.0], dtype=np.float32)
    ids, scores = small.search(query, 3)
    assert ids == [["b", "c", "a"]]
    np.testing.assert_allclose(scores, [[0.5, 0.3, 0.1]], rtol=1e-6)
    assert scores.dtype == np.float32


def test_k_larger_than_the_index_returns_what_exists(small: ItemIndex) -> None:
    ids, scores = small.search(np.ones((2, 4)), 10)
    assert [len(row) for row in ids] == [3, 3]
    assert scores.shape == (2, 3)
    empty = ItemIndex(4)
    ids, scores = empty.search(np.ones(4), 5)
    assert ids == [[]] and scores.shape == (1, 0)


def test_search_labels_are_the_ids_labels_in_search_order(small: ItemIndex) -> None:
    query = np.array([0.1, 0.5, 0.3, 0.0], dtype=np.float32)
    labels = small.search_labels(query, 10)
    ids, _ = small.search(query, 10)
    assert labels.dtype == np.int64 and labels.tolist() == small.labels(ids[0]).tolist()
    small.upsert(["a"], unit(4, 3))  # a changed vector keeps its label
    assert small.labels(["a"]).tolist() == [labels[2]]
    with pytest.raises(KeyError):
        small.labels(["nope"])
    assert ItemIndex(4).search_labels(np.ones(4), 3).shape == (0,)


def test_upsert_replaces_the_vector(small: ItemIndex) -> None:
    small.upsert(["a"], unit(4, 3, 2.0)[None])
    assert len(small) == 3
    ids, scores = small.search(unit(4, 3), 1)
    assert ids == [["a"]] and scores[0, 0] == pytest.approx(2.0)
    np.testing.assert_array_equal(small.vector("a"), unit(4, 3, 2.0))
    # the old vector is gone, not shadowed: nothing points along axis 0 any more
    assert small.search(unit(4, 0), 1)[1][0, 0] == 0.0


def test_repeated_id_in_one_upsert_keeps_the_last() -> None:
    index = ItemIndex(2)
    index.upsert(["x", "y", "x"], np.array([[1, 0], [0, 1], [5, 5]], dtype=np.float32))
    assert len(index) == 2
    np.testing.assert_array_equal(index.vector("x"), [5, 5])


def test_remove(small: ItemIndex) -> None:
    version = small.version
    assert small.remove(["b", "unknown", "b"]) == 1
    assert len(small) == 2 and "b" not in small and "a" in small
    assert sorted(small.search(unit(4, 1), 3)[0][0]) == ["a", "c"]
    assert small.remove(["unknown"]) == 0
    assert small.version == version + 1
    with pytest.raises(KeyError):
        small.vector("b")
    small.upsert(["b"], unit(4, 1)[None])  # a removed id can come back
    assert small.similar("a", 5)[0][0] in {"b", "c"} and len(small) == 3


def test_similar_excludes_the_item_itself() -> None:
    index = ItemIndex(3)
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.5, 0.5, 0]], dtype=np.float32)
    index.upsert(["p", "q", "r", "s"], vectors)
    hits = index.similar("p", 2)
    assert [item for item, _ in hits] == ["q", "s"]
    assert hits[0][1] == pytest.approx(0.9)
    assert all(item != "p" for item, _ in index.similar("p", 10))
    assert len(index.similar("p", 10)) == 3


def test_similar_excludes_self_even_among_identical_vectors() -> None:
    index = ItemIndex(2)
    index.upsert(["a", "b", "c"], np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32))
    assert [item for item, _ in index.similar("b", 1)] == ["a"]
    ids, scores = index.search_ids(["a", "c"], 1)
    assert ids[0] == ["b"] and ids[1][0] in {"a", "b"}
    assert scores.shape == (2, 1)


def test_search_ids_unknown_raises(small: ItemIndex) -> None:
    with pytest.raises(KeyError):
        small.similar("nope", 3)


def test_cosine_and_l2_metrics() -> None:
    cosine = ItemIndex(2, metric="cosine")
    cosine.upsert(["long", "diag"], np.array([[10, 0], [1, 1]], dtype=np.float32))
    ids, scores = cosine.search([[3, 0]], 2)
    assert ids == [["long", "diag"]]
    np.testing.assert_allclose(scores, [[1.0, np.sqrt(0.5)]], rtol=1e-5)
    l2 = ItemIndex(2, metric="l2")
    l2.upsert(["near", "far"], np.array([[1, 0], [5, 0]], dtype=np.float32))
    ids, scores = l2.search([[0, 0]], 2)
    assert ids == [["near", "far"]]
    np.testing.assert_allclose(scores, [[1.0, 25.0]])  # squared distances, ascending


def test_bad_input_is_refused(small: ItemIndex) -> None:
    with pytest.raises(ValueError, match="shape"):
        small.upsert(["z"], np.ones((1, 5)))
    with pytest.raises(ValueError, match="2 ids but 1"):
        small.upsert(["y", "z"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        small.upsert(["z"], np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(ValueError, match="k must be"):
        small.search(np.ones(4), 0)
    with pytest.raises(ValueError, match="metric"):
        ItemIndex(4, metric="hamming")  # type: ignore[arg-type]
    assert len(small) == 3  # nothing half-applied


def test_refreshed_at_and_age(small: ItemIndex) -> None:
    before = small.refreshed_at
    time.sleep(0.01)
    assert small.age_seconds() >= 0.01
    small.upsert(["d"], unit(4, 3)[None])
    assert small.refreshed_at > before
    assert small.age_seconds() < 1.0


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    index = ItemIndex(8, metric="cosine")
    index.upsert([f"i{j}" for j in range(50)], rng.normal(size=(50, 8)))
    index.remove(["i3", "i7"])
    index.upsert(["i10", "new"], rng.normal(size=(2, 8)))
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["ids.json", "index.faiss"]
    json.loads((tmp_path / "idx" / "ids.json").read_text())  # plain JSON, no pickle

    back = ItemIndex.load(tmp_path / "idx")
    assert (back.dim, back.metric, len(back), back.version) == (8, "cosine", 49, index.version)
    assert back.refreshed_at == index.refreshed_at
    assert sorted(back.ids()) == sorted(index.ids())
    queries = rng.normal(size=(5, 8))
    assert back.search(queries, 10)[0] == index.search(queries, 10)[0]
    np.testing.assert_array_equal(back.vector("new"), index.vector("new"))
    back.upsert(["another"], rng.normal(size=(1, 8)))  # labels continue, no collision
    assert len(back) == 50 and back.vector("new") is not None


def test_load_refuses_mismatched_files(tmp_path: Path, small: ItemIndex) -> None:
    small.save(tmp_path)
    meta = json.loads((tmp_path / "ids.json").read_text())
    meta["ids"] = meta["ids"][:-1]
    (tmp_path / "ids.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different items"):
        ItemIndex.load(tmp_path)


def test_exact_against_numpy_brute_force_10k_after_removes_and_updates() -> None:
    rng = np.random.default_rng(1)
    n, dim, k = 10_000, 32, 10
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"item{j}" for j in range(n)]
    index = ItemIndex(dim)
    for start in range(0, n, 2_500):  # several upserts, as a stream would do
        index.upsert(ids[start : start + 2_500], vectors[start : start + 2_500])
    # remove some (FAISS compacts its storage, so rows move), then replace a tenth in
    # place, some in one batch and some one by one, so the test covers updated vectors
    removed = rng.choice(n, size=500, replace=False)
    index.remove([ids[j] for j in removed])
    changed = rng.choice(np.setdiff1d(np.arange(n), removed), size=n // 10, replace=False)
    vectors[changed] = rng.normal(size=(len(changed), dim)).astype(np.float32)
    index.upsert([ids[j] for j in changed[:-50]], vectors[changed[:-50]])
    for j in changed[-50:]:
        index.upsert([ids[j]], vectors[j][None])
    assert len(index) == n - 500
    for j in changed[:20]:
        np.testing.assert_array_equal(index.vector(ids[j]), vectors[j])

    queries = rng.normal(size=(200, dim)).astype(np.float32)
    got_ids, got_scores = index.search(queries, k)
    exact = queries @ vectors.T
    exact[:, removed] = -np.inf
    for row in range(len(queries)):
        top = np.argsort(-exact[row], kind="stable")[:k]
        np.testing.assert_allclose(got_scores[row], exact[row, top], rtol=1e-4, atol=1e-4)
        # ids may only differ where scores tie to float precision
        for got, want in zip(got_ids[row], top, strict=True):
            if got != ids[want]:
                assert exact[row, int(got[4:])] == pytest.approx(exact[row, want], abs=1e-4)


def test_concurrent_searches_during_updates() -> None:
    rng = np.random.default_rng(2)
    dim, n = 16, 2_000
    index = ItemIndex(dim)
    index.upsert([f"i{j}" for j in range(n)], rng.normal(size=(n, dim)))
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                ids, scores = index.search(local.normal(size=(4, dim)), 5)
                assert all(len(row) == 5 for row in ids)
                assert np.all(np.diff(scores, axis=1) <= 1e-6)
                index.similar(f"i{local.integers(n)}", 3)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):
        j = int(rng.integers(n))
        index.upsert([f"i{j}"], rng.normal(size=(1, dim)))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(index) == n and index.version == 201


def test_ivf_index_updates_in_place_and_finds_clustered_neighbours(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)) * 5
    x = (centres[rng.integers(0, 20, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    ids = [f"i{j}" for j in range(len(x))]
    ivf = IVFItemIndex(16, x, nprobe=8)
    flat = ItemIndex(16)
    for index in (ivf, flat):
        index.upsert(ids, x)
    found, _ = ivf.search(x[:50], 10)
    exact, _ = flat.search(x[:50], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recall >= 0.9
    # an update moves the vector (maybe to another list); its old place is gone
    ivf.upsert(["i3"], x[7:8])
    np.testing.assert_allclose(ivf.vector("i3"), x[7])
    assert len(ivf) == len(x)
    assert ivf.remove(["i1", "nope"]) == 1 and "i1" not in ivf and len(ivf) == len(x) - 1
    with pytest.raises(TypeError):
        ivf.save(tmp_path / "ivf")
    with pytest.raises(ValueError):
        IVFItemIndex(16, x[:10], nlist=20)  # fewer training vectors than lists
