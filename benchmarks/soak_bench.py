"""Memory over a long, paced stream: the worker's (and the broker's) RSS every few seconds.

A ``drex worker`` (a subprocess, as in production) against the embedded broker learns a
stream sent at a fixed rate (``--rate`` events per second, reviews and ratings as
``drex produce`` plans them) for ``--minutes``. Every ``--every`` seconds the bench reads
the worker's and the broker's resident set size (``VmRSS`` in ``/proc``) and the
worker's metrics: interactions learned, reviews the learner's cache names and the MiB
those loaded hold (``DREX_REVIEW_CACHE_MB`` bounds it). It prints the series and the
growth of the worker's RSS after the warm-up (``--warmup`` minutes: the encoder, the
first sweep of the review cache and the allocator's pools settle), in percent and MiB
per 1,000 interactions learned. RSS is a sawtooth (a take's buffers come and go, the
review cache fills and is swept, memtables fill and flush), so growth compares the
median of the first two minutes after the warm-up with the median of the last two, and
the peak is printed beside it.

The goal of a bounded worker: < 10% growth after warm-up over 10 minutes. The embedded
broker is memory only (it keeps every record it is sent), so its growth is the stream's
size and says nothing about drex.

The stream is the shared Musical Instruments file when present (else the generated
sample), repeated with new users, items and review texts each pass (see
``stream_bench.replay``) so that it never runs out, in time order.

    python benchmarks/soak_bench.py [--minutes 10] [--rate 40] [--every 15] [--warmup 2]
        [--dataset FILE] [--threads 2] [--encoder DIR] [--worker-arg=--role=join]

``--worker-arg=--role=join`` measures a join worker alone (no learner, no torch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from stream_bench import DEFAULT_DATASET, replay

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.sample import write_sample
from streams.broker import EmbeddedBroker, free_port
from streams.metrics import scrape
from streams.plan import plan_events
from streams.producer import EventProducer
from streams.worker import spawn

WINDOW = 2.0  # minutes of samples whose median stands for the start and the end


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pace(
    url: str, events: Sequence[tuple[str, bytes, bytes]], rate: float, stop: threading.Event
) -> None:
    """Send ``events`` at ``rate`` per second until they run out or ``stop`` is set."""

    async def go() -> None:
        async with EventProducer(url) as producer:
            start = time.monotonic()
            for n, (topic, key, value) in enumerate(events):
                if stop.is_set():
                    return
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await producer.send_raw(topic, key, value)

    asyncio.run(go())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the stream")
    parser.add_argument("--rate", type=float, default=40.0, help="events sent per second")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="minutes left out of the growth figure"
    )
    parser.add_argument(
        "--dataset",
        default=str(DEFAULT_DATASET) if DEFAULT_DATASET.exists() else "sample",
        help="a dataset file, or 'sample' (default: the shared Musical Instruments file)",
    )
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--encoder", default="", help="local HF folder (default: MiniLM)")
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="an extra argument for the worker (repeatable), e.g. --worker-arg=--batch-size=64",
    )
    args = parser.parse_args(argv)
    if args.minutes <= args.warmup:
        parser.error("--minutes must exceed --warmup")

    workdir = Path(tempfile.mkdtemp(prefix="drex-soak-bench-"))
    try:
        data = (
            write_sample(workdir / "sample.jsonl", users=400)
            if args.dataset == "sample"
            else Path(args.dataset)
        )
        rows = load_interactions(data).interactions
        needed = int(args.rate * args.minutes * 60)  # events; at most 2 per interaction
        passes = max(1, -(-needed // len(rows)))
        plan = plan_events(replay(rows, passes), seed=0)
        events = plan.events[:needed]
        port = free_port()
        with (
            EmbeddedBroker(log_dir=workdir / "tansu") as broker,
            open(workdir / "worker.log", "wb") as log,
        ):
            command = [
                "--broker", broker.url, "--embedded",
                "--state-dir", str(workdir / "state"),
                "--metrics-port", str(port),
                "--torch-threads", str(args.threads),
                *(["--encoder", args.encoder] if args.encoder else []),
                *args.worker_arg,
            ]  # fmt: skip
            proc = spawn(command, log=log)
            try:
                deadline = time.monotonic() + 300
                join_only = "--role=join" in args.worker_arg  # no learner: "learned" stays 0
                ready = "drex_join_partitions" if join_only else "drex_owns_learner"
                while scrape(port).get(ready, 0.0) < 1.0:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker did not start; see {workdir / 'worker.log'}")
                    time.sleep(1.0)
                broker_pid = broker.pid or 0
                stop = threading.Event()
                sender = threading.Thread(
                    target=pace, args=(broker.url, events, args.rate, stop), daemon=True
                )
                print(
                    f"{len(events):,} events at {args.rate:g}/s for {args.minutes:g} min; "
                    f"worker pid {proc.pid}, sample every {args.every:g} s"
                )
                print(
                    f"{'min':>6} {'worker MiB':>11} {'broker MiB':>11} {'learned':>9} "
                    f"{'cached':>7} {'cache MiB':>10}"
                )
                samples: list[tuple[float, float, float]] = []  # minutes, RSS, learned
                start = time.monotonic()
                sender.start()
                while (elapsed := time.monotonic() - start) < args.minutes * 60:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited; see {workdir / 'worker.log'}")
                    m = scrape(port)
                    worker, learned = (
                        rss_mib(proc.pid),
                        m.get("drex_learner_interactions", 0.0),
                    )
                    samples.append((elapsed / 60, worker, learned))
                    print(
                        f"{elapsed / 60:6.2f} {worker:11.0f} {rss_mib(broker_pid):11.0f} "
                        f"{learned:9.0f} {m.get('drex_reviews_cached', 0.0):7.0f} "
                        f"{m.get('drex_review_cache_bytes', 0.0) / 2**20:10.0f}",
                        flush=True,
                    )
                    time.sleep(args.every)
                stop.set()
                sender.join(timeout=30)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
        end = samples[-1][0] if samples else 0.0
        first = [s for s in samples if args.warmup <= s[0] < args.warmup + WINDOW]
        last = [s for s in samples if s[0] >= end - WINDOW and s[0] >= args.warmup + WINDOW]
        if not first or not last:
            print(f"too short for a growth figure: needs --minutes > --warmup + {2 * WINDOW:g}")
            return 1
        rss0, n0 = statistics.median(s[1] for s in first), statistics.median(s[2] for s in first)
        rss1, n1 = statistics.median(s[1] for s in last), statistics.median(s[2] for s in last)
        per_k = (rss1 - rss0) / max(1.0, (n1 - n0) / 1000)
        print(
            f"worker RSS after warm-up (medians of {WINDOW:g}-minute windows): {rss0:.0f} -> "
            f"{rss1:.0f} MiB ({100 * (rss1 - rss0) / rss0:+.1f}%, {per_k:+.1f} MiB per 1,000 "
            f"interactions, {n1 - n0:.0f} learned between them); peak after warm-up "
            f"{max(s[1] for s in samples if s[0] >= args.warmup):.0f} MiB"
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
