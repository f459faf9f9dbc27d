"""The join's cost alone: core time of a ``--role join`` worker per source event.

A join-only ``drex worker`` (a subprocess) against the embedded broker, its partitions
taken, is sent a generated stream of review + rating pairs (no lone halves, so no event
waits a window); the clock and the worker's CPU time (user + system, from /proc) run
from the first event sent until every pair was joined (``drex_join_outcomes_total
{outcome="both"}``). The producer runs in this process, on the same cores.

    python benchmarks/join_cpu_bench.py [--users 700] [--join-window 30]

Run it from the tree to measure (``PYTHONPATH=.``): the worker imports the code beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.sample import write_sample
from streams.broker import EmbeddedBroker, free_port
from streams.metrics import scrape
from streams.plan import plan_events
from streams.worker import spawn

BOTH = 'drex_join_outcomes_total{outcome="both"}'


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(port: int, name: str, value: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if scrape(port).get(name, 0.0) >= value:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not reach {value} in {timeout:.0f} s")


def time_worker(
    work: Path,
    extra: Sequence[str],
    ready: str,
    events: Sequence[tuple[str, bytes, bytes]],
    done: str,
    target: float,
) -> tuple[float, float]:
    """(wall seconds, the worker's CPU seconds) from the first of ``events`` sent to a
    fresh worker (``extra`` flags) on a fresh embedded broker, once its gauge ``ready``
    is 1, until its metric ``done`` reaches ``target``."""
    port = free_port()
    with EmbeddedBroker(log_dir=work / "tansu") as broker, open(work / "worker.log", "wb") as log:
        command = ["--broker", broker.url, "--embedded", "--state-dir", str(work / "state")]
        command += ["--metrics-port", str(port), "--session-timeout", "4", *extra]
        proc = spawn(command, log=log)
        try:
            wait_for(port, ready, 1.0, 300)
            time.sleep(2)  # the first rebalance settles
            before = cpu_seconds(proc.pid)

            from stream_bench import send_events  # beside this script

            started = time.monotonic()
            send_events(broker.url, events)
            wait_for(port, done, target, 3600)
            return time.monotonic() - started, cpu_seconds(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=700, help="sample users (~12 pairs each)")
    parser.add_argument("--join-window", type=float, default=30.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="join-cpu-"))
    rows = load_interactions(write_sample(work / "sample.jsonl", users=args.users)).interactions
    plan = plan_events(rows, seed=0, rating_only=0.0)
    extra = ["--role", "join", "--join-window", str(args.join_window)]
    seconds, used = time_worker(
        work, extra, "drex_join_partitions", plan.events, BOTH, plan.truth.both
    )
    n = len(plan.events)
    print(
        f"{n} events ({plan.truth.both} pairs): {seconds:.1f} s, {n / seconds:,.0f} events/s; "
        f"worker CPU {used:.2f} s = {1e6 * used / n:.0f} us per event"
    )


if __name__ == "__main__":
    main()
