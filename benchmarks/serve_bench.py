"""Recommendation latency and throughput of ``drex serve`` with 100,000 items.

Builds a learner store the way the worker does (``LearnerSession.process`` in
micro-batches of 4,096) from a generated rating stream in which every one of
``--items`` items is rated at least once, starts ``drex serve`` on it as a subprocess
(as in production), and sends ``GET /users/{id}/recommendations?k=10`` for random known
users from a minimal keep-alive HTTP client at concurrency 1 and 16 (closed loop: each of the
``concurrency`` clients sends its next request when the previous answer arrives). The
client runs on the same machine, so on 2 cores it takes CPU from the server: the figures
are what one such machine does with both.

It also measures retrieval quality in-process: the share of the exact top-10 (every
item ranked by the DReX head) that the served list (FAISS + popular candidates,
re-ranked) contains.

    python benchmarks/serve_bench.py [--items 100000] [--users 20000] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def build_store(state: Path, items: int, users: int, seed: int) -> None:
    """A learner store of ``users`` x ``items`` from ratings only (no encoder work)."""
    from tqdm import tqdm

    from streams.agents.index import IndexFeeder
    from streams.agents.learn import LearnerSession
    from streams.events import InteractionEvent
    from streams.settings import WorkerSettings

    rng = np.random.default_rng(seed)
    # every item once (to a user in turn), then one more rating per user on an item
    # drawn from a long tail (p ~ 1 / (rank + 10)^0.9: no single item dominates)
    n = items + users
    tail = 1.0 / (np.arange(items) + 10.0) ** 0.9
    item_of = np.concatenate(
        [rng.permutation(items), rng.choice(items, users, p=tail / tail.sum())]
    )
    user_of = rng.permutation(np.arange(n) % users)
    quality = rng.normal(0, 0.8, items)
    taste = rng.normal(0, 0.5, users)
    rating = np.clip(np.round(3.8 + quality[item_of] + taste[user_of]), 1, 5)
    settings = WorkerSettings(state_dir=str(state), device="cpu", checkpoint_every=0)
    session = LearnerSession(settings, IndexFeeder())
    batch = 4096
    with tqdm(total=n, desc="learner store", unit="interaction") as bar:
        for s in range(0, n, batch):
            events = [
                (
                    j,
                    InteractionEvent(
                        user_id=f"u{user_of[j]}",
                        item_id=f"i{item_of[j]}",
                        rating=float(rating[j]),
                        text=None,
                        event_time=1.7e9 + j,
                        rating_event_id=f"s{j}",
                    ),
                )
                for j in range(s, min(n, s + batch))
            ]
            session.process(events)
            bar.update(len(events))
    session.release()  # publishes the item index the servers load


def recall(learner_dir: Path, k: int, users: int) -> float:
    """Share of the exact top-k (all items ranked) in the served top-k."""
    from serving.replica import Replica

    replica = Replica(learner_dir)
    try:
        replica.refresh()
        ids = list(replica.users.index)[:users]
        hits = 0
        for user in ids:
            items, scores = replica.exact_scores(user)
            seen = replica.users.seen.get(user, frozenset())
            order = np.argsort(-scores, kind="stable")
            exact = [items[j] for j in order[: k + len(seen)] if items[j] not in seen][:k]
            served = {r.item_id for r in replica.recommend(user, k).items}
            hits += len(served & set(exact))
        return hits / (k * len(ids))
    finally:
        replica.close()


async def load(
    port: int, users: Sequence[str], requests: int, concurrency: int
) -> tuple[np.ndarray, float, int]:
    """Latencies (s) of ``requests`` requests at ``concurrency``, wall time, errors.

    A minimal HTTP/1.1 keep-alive client on asyncio streams: a full client library
    (aiohttp's costs ~1 ms of CPU per request here) would take more of the two cores
    than the server it measures.
    """
    rng = np.random.default_rng(concurrency)
    picks = rng.integers(0, len(users), requests)
    latencies = np.zeros(requests)
    errors = 0
    next_request = 0

    async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        return status

    async def client() -> None:
        nonlocal next_request, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(5):  # warm-up: connection, caches
                await get(reader, writer, f"/users/{users[0]}/recommendations?k=10")
            while next_request < requests:
                j = next_request
                next_request += 1
                started = time.perf_counter()
                status = await get(reader, writer, f"/users/{users[picks[j]]}/recommendations?k=10")
                latencies[j] = time.perf_counter() - started
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=3000, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--recall-users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--servers", type=int, default=1, help="drex serve processes sharing the port"
    )
    parser.add_argument(
        "--state", default="", help="keep the built store here and reuse it on later runs"
    )
    args = parser.parse_args(argv)

    from streams.broker import free_port

    work = Path(tempfile.mkdtemp(prefix="drex-serve-bench-"))
    state = Path(args.state) if args.state else work / "state"
    servers: list[subprocess.Popen[bytes]] = []
    try:
        if not (state / "learner" / "CURRENT").exists():
            started = time.perf_counter()
            build_store(state, args.items, args.users, args.seed)
            print(f"store built in {time.perf_counter() - started:.0f} s", flush=True)
        rate = recall(state / "learner", 10, args.recall_users)

        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        servers = [
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "streams.cli", "serve"),
                    *("--state-dir", str(state), "--port", str(port)),
                    *("--log-level", "warning", "--reuse-port"),
                ],
                env=env,
            )
            for _ in range(args.servers)
        ]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        import urllib.request

        ready = 0
        while ready < 10 * args.servers:  # connections spread over the processes
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    ready = ready + 1 if response.status == 200 else 0
            except OSError:
                ready = 0
            if any(s.poll() is not None for s in servers) or time.monotonic() > deadline:
                raise RuntimeError("drex serve did not become ready")
            time.sleep(0.2 if ready == 0 else 0.0)
        users = [f"u{j}" for j in range(args.users)]
        rows = []
        for c in args.concurrency:
            latencies, wall, errors = asyncio.run(load(port, users, args.requests, c))
            rows.append((c, latencies, wall, errors))
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{args.items} items, {args.users} users, k=10, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; {args.servers} server process(es) and the client "
        "on this machine"
    )
    print(f"{'concurrency':>11}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for c, latencies, wall, errors in rows:
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        rate_s = len(latencies) / wall
        print(f"{c:>11}{len(latencies):>10}{rate_s:>9.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}")
    print(
        f"retrieval: served top-10 holds {rate:.1%} of the exact top-10 ({args.recall_users} users)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
