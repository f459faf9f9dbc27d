"""How fast the item index updates and answers, exact (flat) against IVF.

The serving design keeps every item's vector fresh while queries run, so what matters is
the latency of a single-item upsert and of a single query, alone and under concurrent
load, and for IVF what its speed costs in recall. Both indexes run behind the same
``ItemIndex`` wrapper (string ids, readers-writer lock), so the numbers include what
serving would pay. Data are clustered (like learned embeddings), not uniform noise,
which would be IVF's worst case.

FAISS's OpenMP thread count is a parameter (set in every thread: it is per thread): on a
small machine the default, one per core, makes single queries far slower than one thread.

    python benchmarks/index_bench.py [--n 100000 --dim 64 --k 10 --omp 1 0]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from drex_store.index import ItemIndex

Array = npt.NDArray[np.float32]


@dataclass
class Row:
    name: str
    omp: int
    build_s: float
    upsert_ms: tuple[float, float]
    search1_ms: tuple[float, float]
    qps1: float
    searchn_ms: tuple[float, float]
    qpsn: float
    recall: float


def clustered(n: int, dim: int, rng: np.random.Generator, centers: Array, noise: float) -> Array:
    """Points around random centres, unit length (as a cosine/IP recommender keeps them).

    ``noise`` sets how clustered they are, which decides IVF's recall at a given nprobe.
    """
    which = rng.integers(len(centers), size=n)
    x = centers[which] + noise * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


class RemoveAddItemIndex(ItemIndex):
    """The exact index updated the textbook way, remove_ids + add_with_ids, which moves
    every row after the removed one: what ItemIndex's in-place replace avoids."""

    def _replace(self, labels: npt.NDArray[np.int64], matrix: Array) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(labels))
        self._index.add_with_ids(matrix, labels)


class IvfItemIndex(ItemIndex):
    """An ItemIndex over IVFFlat instead of the exact IDMap2(flat), for comparison.

    Same ids, lock and search path; only the storage operations differ: IVF keeps its own
    ids (a hash-table direct map finds them), and a changed vector moves between
    inverted lists, so an update is remove_ids + add_with_ids.
    """

    def __init__(self, dim: int, train: Array, nlist: int, nprobe: int) -> None:
        super().__init__(dim, metric="ip")
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(train)
        ivf.nprobe = nprobe
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # needs IDSelectorArray removals
        self._index = ivf

    def _replace(self, labels: npt.NDArray[np.int64], matrix: Array) -> None:
        self._remove(labels)
        self._add(labels, matrix)

    def _add(self, labels: npt.NDArray[np.int64], matrix: Array) -> None:
        self._index.add_with_ids(matrix, labels)

    def _remove(self, labels: npt.NDArray[np.int64]) -> None:
        self._index.remove_ids(faiss.IDSelectorArray(labels))


def percentiles(samples_s: Sequence[float]) -> tuple[float, float]:
    ms = np.asarray(samples_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(calls: Sequence[Callable[[], object]]) -> list[float]:
    out = []
    for call in calls:
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def concurrent(
    index: ItemIndex, queries: Array, k: int, threads: int, omp: int
) -> tuple[list[float], float]:
    """Each thread sends its share of the queries one at a time; returns latencies and
    aggregate queries per second. OpenMP settings are per thread, so each sets its own."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        faiss.omp_set_num_threads(omp)
        mine = queries[t::threads]
        barrier.wait()
        latencies[t] = timed([lambda q=q: index.search(q, k) for q in mine])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    return flat, len(flat) / wall


def measure(
    name: str,
    build: Callable[[], ItemIndex],
    ids: list[str],
    vectors: Array,
    updates: Array,
    queries: Array,
    args: argparse.Namespace,
    omp: int,
    truth: list[set[str]] | None,
) -> tuple[Row, list[list[str]]]:
    start = time.perf_counter()
    index = build()
    index.upsert(ids, vectors)
    build_s = time.perf_counter() - start

    rng = np.random.default_rng(args.seed + 1)
    targets = rng.integers(len(ids), size=len(updates))
    upserts = timed(
        [
            lambda j=j, v=v: index.upsert([ids[j]], v[None])
            for j, v in zip(targets, updates, strict=True)
        ]
    )

    index.search(queries[:10], args.k)  # warm-up
    single = timed([lambda q=q: index.search(q, args.k) for q in queries])
    qps1 = len(single) / sum(single)
    many, qpsn = concurrent(index, queries, args.k, args.threads, omp)

    found, _ = index.search(queries, args.k)
    recall = 1.0
    if truth is not None:
        hits = sum(len(set(row) & want) for row, want in zip(found, truth, strict=True))
        recall = hits / sum(len(want) for want in truth)
    row = Row(
        name,
        omp,
        build_s,
        percentiles(upserts),
        percentiles(single),
        qps1,
        percentiles(many),
        qpsn,
        recall,
    )
    return row, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--updates", type=int, default=1_000, help="single-item upserts timed")
    parser.add_argument("--threads", type=int, default=16, help="concurrent searching threads")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument(
        "--omp",
        type=int,
        nargs="+",
        default=[1, 0],
        help="FAISS OpenMP thread counts to compare (0 = FAISS's default)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="spread around the n/100 cluster centres (N(0,1) each); 0.3 = tight clusters, "
        "3 = close to isotropic Gaussian (IVF's hard case)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centers = rng.normal(size=(max(1, args.n // 100), args.dim)).astype(np.float32)
    vectors = clustered(args.n, args.dim, rng, centers, args.noise)
    updates = clustered(args.updates, args.dim, rng, centers, args.noise)
    queries = clustered(args.queries, args.dim, rng, centers, args.noise)
    ids = [f"item{j}" for j in range(args.n)]
    default_omp = faiss.omp_get_max_threads()

    rows: list[Row] = []
    for omp in args.omp:
        faiss.omp_set_num_threads(omp if omp > 0 else default_omp)
        used = faiss.omp_get_max_threads()
        exact, truth_ids = measure(
            "flat (exact)",
            lambda: ItemIndex(args.dim, metric="ip"),
            ids,
            vectors,
            updates,
            queries,
            args,
            used,
            None,
        )
        rows.append(exact)
        slow, _ = measure(
            "flat, remove+add",
            lambda: RemoveAddItemIndex(args.dim, metric="ip"),
            ids,
            vectors,
            updates,
            queries,
            args,
            used,
            [set(row) for row in truth_ids],
        )
        rows.append(slow)
        # the exact answers after the same updates (same seed) are the recall reference
        truth = [set(row) for row in truth_ids]
        ivf, _ = measure(
            f"IVF{args.nlist} nprobe {args.nprobe}",
            lambda: IvfItemIndex(args.dim, vectors, args.nlist, args.nprobe),
            ids,
            vectors,
            updates,
            queries,
            args,
            used,
            truth,
        )
        rows.append(ivf)

    print(
        f"{args.n:,} items x {args.dim} dims (clustered, noise {args.noise}, unit length), "
        f"k={args.k}, "
        f"{args.queries} queries, {args.updates} single-item upserts; "
        f"{os.cpu_count()} CPUs, faiss {faiss.__version__}"
    )
    header = (
        f"{'index':<22} {'omp':>3} {'build s':>7} {'upsert p50/p99 ms':>18} "
        f"{'search 1 thr p50/p99 ms':>24} {'qps':>6} "
        f"{f'search {args.threads} thr p50/p99 ms':>25} {'qps':>6} {'recall@' + str(args.k):>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.name:<22} {r.omp:>3} {r.build_s:>7.2f} "
            f"{r.upsert_ms[0]:>8.3f} / {r.upsert_ms[1]:>7.3f} "
            f"{r.search1_ms[0]:>11.3f} / {r.search1_ms[1]:>10.3f} {r.qps1:>6.0f} "
            f"{r.searchn_ms[0]:>11.3f} / {r.searchn_ms[1]:>11.3f} {r.qpsn:>6.0f} "
            f"{r.recall:>9.3f}"
        )
    print("build: wrapper upserts of all items (IVF: + k-means training on them)")


if __name__ == "__main__":
    main()
