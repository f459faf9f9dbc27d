"""End-to-end throughput of the streaming learner, next to its parts measured alone.

A ``drex worker`` (a subprocess, as in production) against the embedded broker learns a
stream; the clock runs from the first event sent to the last interaction persisted in
the learner store, with the worker already started and holding the learner. Two
streams: every interaction with text and rating, and ratings only (no encoder work: the
cost of the join, the learner update and the store; each lone rating waits one join
window for a review, so the last ones arrive a window late). Two more runs give the join
alone (``--role join``, no learner), in batched steps (the default) and one message per
step (``--join-batch-size 1``, one broker round trip per message). ``--layout split``
runs the two learned streams through a ``--role join`` and a ``--role learn`` worker
(two processes, one consumer group) instead of one worker with every role.

The same run then measures the ceilings directly, in this process: the encoder on the
same reviews (``TextEncoder.encode``, batched, length-sorted over all of them) just
before and just after the text stream (the ratio uses their mean: on shared machines
speed drifts over minutes), and the learner on the same ratings
(``DReXLearner.learn_many`` in micro-batches of the worker's size, built as the worker
builds it, the reviews left out). The ratios say how much the streaming machinery costs.

The stream is the first N interactions of a dataset in time order: by default the shared
Musical Instruments file when it is there (real interleaving of users and items, which
sets how far a micro-batch parallelises), else the generated sample, whose rows come
grouped by user (each user's interactions back to back: a worst case for the learner).

One burst of a few thousand events measures latency as much as throughput: the last
lone ratings wait a join window, the last micro-batch waits its ``within``. ``--passes
N`` streams the N interactions ``--passes`` times over, each pass with its own users and
items (ids suffixed ``~k``, event times shifted past the previous pass, and reviews
ending `` ~k``, as the worker's review cache would otherwise find them encoded), so that
a longer stream of the same shape shows the sustained rate.

The producer sends the whole stream at once, so the producer, the broker and the join
work through all its events on the same cores while the learner starts (on 2 cores and
40,000 events, for ~30 s). The ``2nd half/s`` column, interactions learned per second
from the scrape at which half were learned to the end, leaves most of that opening
out: the learner's sustained rate once the join has caught up (in production events
arrive over time and the join's share of the cores stays small). The end-to-end rate,
which includes the opening, is the headline figure.

``--paced`` asks a different question: the highest rate the worker sustains when events
arrive over time, as in production (benchmarks/paced.py). Each probe sends one stream
(``--streams ratings``, the default, or ``text``) at a fixed rate in interactions/s for
``--duration`` seconds (120) to a fresh broker and worker, with the whole dataset replayed
(new users and items each pass) to as many interactions as that takes, scrapes the
worker's consumer lag and learned interactions every second, and judges the rate
sustainable when the producer reached it, neither the lag nor the backlog (sent and not
yet learned) kept growing over the second half of the window (least-squares slopes at
most ``--tolerance``, 10%, of the rate) and everything sent was learned within
``--max-behind`` seconds of the last send.
``--rate R[,R...]`` probes those rates; without it the search starts at ``--start-rate``
(200), doubles until a probe fails (halves while the first ones fail), then bisects
``--bisect-steps`` times, at most ``--max-probes`` probes. The table gives each probe's
rate, interactions/s sent and learned, the lag at the end, the slopes of the lag and the
backlog, what was behind at the end, the seconds to catch up after the last send, the
worker's back-pressure events (``drex_producer_buffer_full_total``), the verdict, and
then the sustainable throughput next to the learner alone (ratings) or the encoder alone
(text) and their ratio. ``--duration 20 --max-probes 3`` is a smoke run.

    python benchmarks/stream_bench.py [--interactions 4000] [--passes 1] [--batch-size 1024]
        [--dataset FILE] [--threads 2] [--learn-threads 1] [--encoder DIR] [--layout one|split]
    python benchmarks/stream_bench.py --paced [--streams ratings|text] [--rate R[,R...]]
        [--start-rate 200] [--duration 120] [--max-probes 8] [--bisect-steps 2]
        [--tolerance 0.1] [--max-behind 15]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.sample import write_sample
from drex_model.types import Interaction
from streams.broker import EmbeddedBroker, free_port
from streams.metrics import scrape
from streams.plan import plan_events
from streams.producer import EventProducer
from streams.settings import WorkerSettings
from streams.worker import spawn

DEFAULT_DATASET = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "amazon14_musical_instruments_5.json.gz"
)


@dataclass
class Run:
    name: str
    interactions: int
    events: int
    seconds: float
    encode_seconds: float  # encoding takes' reviews ahead of their micro-batches
    learn_seconds: float  # inside learn_many, summed over batches
    persist_seconds: float  # the store's WriteBatch, summed
    batches: int
    second_half: float | None = None  # interactions/s from half learned to the end
    # CPU seconds each process spent from the first send to the last interaction learned
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.interactions / self.seconds


POLL_SECONDS = 0.5  # a scrape costs the worker ~4 ms of CPU (and its GIL): poll gently


def replay(rows: Sequence[Interaction], passes: int) -> list[Interaction]:
    """``rows`` ``passes`` times over, each pass with its own users, items and review
    texts and its event times after the previous pass's."""
    if passes == 1:
        return list(rows)
    span = max(r.timestamp for r in rows) - min(r.timestamp for r in rows) + 1
    return [
        dataclasses.replace(
            r,
            user=f"{r.user}~{k}",
            item=f"{r.item}~{k}",
            text=f"{r.text} ~{k}" if r.text else r.text,
            timestamp=r.timestamp + k * span,
        )
        for k in range(passes)
        for r in rows
    ]


def wait(
    port: int,
    name: str,
    target: float,
    timeout: float,
    proc: object,
    trace: list[tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Scrape until ``name`` reaches ``target``; the time it did is late by at most one
    poll interval. ``trace`` collects (monotonic time, value) of every scrape."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(port)
        value = m.get(name, 0.0)
        if trace is not None:
            trace.append((time.monotonic(), value))
        if value >= target:
            return m
        if proc.poll() is not None or time.monotonic() > deadline:  # type: ignore[attr-defined]
            raise RuntimeError(f"worker stopped or timed out waiting for {name} >= {target}")
        time.sleep(POLL_SECONDS)


def send_events(url: str, events: Sequence[tuple[str, bytes, bytes]]) -> None:
    """Send ``events`` (topic, key, value) as fast as the producer takes them."""

    async def send() -> None:
        async with EventProducer(url) as producer:
            for topic, key, value in events:
                await producer.send_raw(topic, key, value)

    asyncio.run(send())


def second_half_rate(trace: Sequence[tuple[float, float]]) -> float | None:
    """Rate from the first scrape at or past half the final value to the last scrape
    (``trace`` as :func:`wait` collects it); None when that spans no time."""
    if not trace:
        return None
    end, final = trace[-1]
    t, value = next((t, v) for t, v in trace if v >= final / 2)
    return (final - value) / (end - t) if end > t else None


def print_cpu(runs: Iterable[Run]) -> None:
    """Where each burst's CPU went (cpu_use.py, beside this script)."""
    from cpu_use import cpu_line

    for r in runs:
        if r.cpu:
            print(f"{r.name} {cpu_line(r.cpu, r.interactions, r.seconds)}")


def print_ratios(label: str, run: Run, alone: float, ceiling: str) -> None:
    """End to end and second half against a ceiling measured alone."""
    print(f"{label} end to end / {ceiling}: {run.rate / alone:.2f}")
    if run.second_half is not None:
        print(f"second half / {ceiling}: {run.second_half / alone:.2f}")


@dataclass
class Workers:
    """Started workers against a fresh embedded broker (:func:`workers`)."""

    broker: EmbeddedBroker
    procs: list[Any]
    ports: list[int]
    roles: list[str]
    learner: int | None  # which of them holds the learner (None: no learner among them)


@contextmanager
def workers(
    slug: str,
    args: argparse.Namespace,
    workdir: Path,
    roles: Sequence[str] = ("all",),
    join_batch: int = 1000,
) -> Iterator[Workers]:
    """A fresh embedded broker and one worker per role (one consumer group), ready: the
    join holds its partitions, the learner its store; stopped on leaving."""
    ports = [free_port() for _ in roles]
    with EmbeddedBroker(log_dir=workdir / f"tansu-{slug}") as broker, ExitStack() as stack:
        procs = []
        for n, (role, port) in enumerate(zip(roles, ports, strict=True)):
            log = stack.enter_context(open(workdir / f"worker-{slug}-{n}.log", "wb"))
            command = [
                "--broker",
                broker.url,
                "--embedded",
                "--state-dir",
                str(workdir / f"state-{slug}-{n}"),
                "--metrics-port",
                str(port),
                "--torch-threads",
                str(args.threads),
                "--learn-threads",
                str(args.learn_threads),
                "--batch-size",
                str(args.batch_size),
                "--session-timeout",
                "4",
                "--checkpoint-every",
                "0",
                "--join-window",
                str(args.join_window),
                "--role",
                role,
                "--join-batch-size",
                str(join_batch),
            ]
            if args.encoder:
                command += ["--encoder", args.encoder]
            proc = spawn(command, log=log)
            stack.callback(_stop, proc)
            procs.append(proc)
        learner = next((n for n, r in enumerate(roles) if r in ("all", "learn")), None)
        for n, role in enumerate(roles):
            if role in ("all", "join"):
                wait(ports[n], "drex_join_partitions", 1.0, 300, procs[n])
        if learner is not None:
            wait(ports[learner], "drex_owns_learner", 1.0, 300, procs[learner])
        yield Workers(broker, procs, ports, list(roles), learner)


def stream_run(
    name: str,
    rows: Sequence[Interaction],
    rating_only: float,
    args: argparse.Namespace,
    workdir: Path,
    roles: Sequence[str] = ("all",),
    join_batch: int = 1000,
) -> Run:
    """Time one stream through workers of ``roles`` (one process each, one consumer
    group): until the learner store holds every interaction, or, with no learner among
    them, until every pair was joined (the join's own capacity)."""
    plan = plan_events(rows, seed=0, rating_only=rating_only)
    slug = "".join(c if c.isalnum() else "-" for c in name)
    from cpu_use import cpu_by_process, cpu_since  # beside this script

    with workers(slug, args, workdir, roles, join_batch) as w:
        broker, procs, ports, learner = w.broker, w.procs, w.ports, w.learner

        cpu_before = cpu_by_process(w)
        started = time.monotonic()
        send_events(broker.url, plan.events)
        trace: list[tuple[float, float]] = []
        if learner is not None:
            total = "drex_learner_interactions"
            m = wait(ports[learner], total, plan.truth.interactions, 3600, procs[learner], trace)
        else:
            both = 'drex_join_outcomes_total{outcome="both"}'
            m = wait(ports[0], both, plan.truth.both, 3600, procs[0])
        seconds = time.monotonic() - started
        cpu = cpu_since(w, cpu_before)
    return Run(
        name,
        plan.truth.interactions,
        len(plan.events),
        seconds,
        m.get("drex_encode_seconds_sum", 0.0),
        m.get("drex_learn_seconds_sum", 0.0),
        m.get("drex_persist_seconds_sum", 0.0),
        int(m.get("drex_learn_seconds_count", 0.0)),
        second_half_rate(trace),
        cpu,
    )


def _stop(proc: Any) -> None:
    proc.terminate()
    proc.wait(60)


def encoder_rate(
    rows: Sequence[Interaction], args: argparse.Namespace, encoder: Any
) -> tuple[float, float]:
    """Reviews/s and tokens/s of the encoder alone on the same texts."""
    texts = list(dict.fromkeys(r.text for r in rows if r.text))
    encoder.encode(texts[:64])  # warm-up (the worker warms up too)
    started = time.monotonic()
    encoded = encoder.encode(texts)
    seconds = time.monotonic() - started
    tokens = sum(int(e.tokens.shape[0]) for e in encoded)
    return len(texts) / seconds, tokens / seconds


def learner_rate(rows: Sequence[Interaction], args: argparse.Namespace, encoder: Any) -> float:
    """Interactions/s of ``learn_many`` alone on the same ratings, in micro-batches, with
    the learner built as the worker builds it (text-capable: a rating's missing review
    still goes through fusion as zeros)."""
    from drex_model.device import intra_op_threads
    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig

    ratings = [dataclasses.replace(r, text=None) for r in rows]
    config = DReXConfig.for_variant("drex", encoder_dim=encoder.hidden_size)
    DReXLearner(config, encoder=encoder, seed=0).learn_many(ratings[: args.batch_size])  # warm-up
    learner = DReXLearner(config, encoder=encoder, seed=0)
    started = time.monotonic()
    with intra_op_threads(args.learn_threads):  # as the worker learns
        for s in range(0, len(ratings), args.batch_size):
            learner.learn_many(ratings[s : s + args.batch_size])
    return len(ratings) / (time.monotonic() - started)


def paced_runs(
    chosen: set[str], base: Sequence[Interaction], args: argparse.Namespace, workdir: Path
) -> dict[str, list[Any]]:
    """``--paced``: for each chosen stream, probes at fixed rates (``--rate``) or the
    search for the highest sustainable one (paced.py); each probe on a fresh broker and
    worker, its stream ``base`` replayed (new users and items each pass) to as many
    interactions as the rate takes for ``--duration`` seconds."""
    import paced  # beside this script
    from cpu_use import cpu_by_process, cpu_line, cpu_since

    roles = ["all"] if args.layout == "one" else ["join", "learn"]
    out: dict[str, list[Any]] = {}
    for kind, rating_only in (("ratings", 1.0), ("text", 0.0)):
        if kind not in chosen:
            continue

        def run_probe(rate: float, kind: str = kind, rating_only: float = rating_only) -> Any:
            needed = math.ceil(rate * args.duration * 1.05) + args.batch_size
            rows = replay(base, math.ceil(needed / len(base)))[:needed]
            plan = plan_events(rows, seed=0, rating_only=rating_only)
            slug = f"paced-{kind}-{rate:.0f}"
            with workers(slug, args, workdir, roles) as w:
                assert w.learner is not None
                order = [w.learner, *(n for n in range(len(roles)) if n != w.learner)]
                cpu_before, started = cpu_by_process(w), time.monotonic()
                result = paced.probe(
                    rate,
                    plan.events,
                    w.broker.url,
                    [w.ports[n] for n in order],
                    w.procs[w.learner],
                    args.duration,
                    args.tolerance,
                    args.max_behind,
                    args.send_every,
                )
                cpu = cpu_since(w, cpu_before)
                learned = scrape(w.ports[w.learner]).get(paced.LEARNED, 0.0)
            for state in workdir.glob(f"state-{slug}-*"):
                shutil.rmtree(state, ignore_errors=True)
            verdict = "sustainable" if result.sustainable else f"not sustainable ({result.why})"
            print(
                f"  {kind} {rate:.0f}/s: sent {result.produced:.0f}/s, learned "
                f"{result.learned:.0f}/s, backlog slope {result.backlog_slope:.1f}/s: {verdict}",
                flush=True,
            )
            print(f"    {cpu_line(cpu, learned, time.monotonic() - started)}", flush=True)
            if args.trace:
                paced.print_trace(result)
            return result

        if args.rate:
            out[kind] = [run_probe(float(r)) for r in args.rate.split(",")]
        else:
            out[kind] = paced.search(run_probe, args.start_rate, args.max_probes, args.bisect_steps)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=4000)
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="stream the interactions this many times over, with new users and items "
        "each pass (a sustained stream rather than one burst)",
    )
    parser.add_argument(
        "--dataset",
        default=str(DEFAULT_DATASET) if DEFAULT_DATASET.exists() else "sample",
        help="a dataset file, or 'sample' (default: the shared Musical Instruments file "
        "when present)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="torch intra-op threads while encoding (the worker's --torch-threads)",
    )
    parser.add_argument(
        "--learn-threads",
        type=int,
        default=WorkerSettings().learn_threads,
        help="torch intra-op threads while learning (the worker's --learn-threads)",
    )
    parser.add_argument("--batch-size", type=int, default=WorkerSettings().batch_size)
    parser.add_argument("--encoder", default="", help="local HF folder (default: MiniLM)")
    parser.add_argument(
        "--join-window",
        type=float,
        default=1.0,
        help="seconds a lone rating waits for a review that never comes (counted in the "
        "rating-only run's time)",
    )
    parser.add_argument(
        "--layout",
        choices=["one", "split"],
        default="one",
        help="one: a worker with every role; split: a join worker and a learn worker, two "
        "processes in one consumer group (the learner shares no GIL with the join)",
    )
    parser.add_argument(
        "--streams",
        default=None,
        help="which runs, comma-separated: text (with the encoder alone before and after), "
        "ratings (with the learner alone), join (batched and one message per step); "
        "default text,ratings,join, with --paced ratings (text and ratings only)",
    )
    paced_flags = parser.add_argument_group("paced mode (benchmarks/paced.py)")
    paced_flags.add_argument(
        "--paced",
        action="store_true",
        help="send at fixed rates for --duration seconds and find the highest sustainable "
        "rate, instead of the bursts",
    )
    paced_flags.add_argument(
        "--rate", default="", help="interactions/s to probe, comma-separated (no search)"
    )
    paced_flags.add_argument("--start-rate", type=float, default=200.0)
    paced_flags.add_argument("--duration", type=float, default=120.0, help="seconds per probe")
    paced_flags.add_argument(
        "--send-every", type=float, default=0.05, help="seconds between the producer's sends"
    )
    paced_flags.add_argument("--max-probes", type=int, default=8)
    paced_flags.add_argument("--bisect-steps", type=int, default=2)
    paced_flags.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="largest growth of the lag (events/s) and of the backlog (interactions/s) over "
        "the window's second half, as a share of the rate",
    )
    paced_flags.add_argument(
        "--max-behind",
        type=float,
        default=15.0,
        help="seconds after the last send within which all must be learned",
    )
    paced_flags.add_argument(
        "--trace", action="store_true", help="print each probe's samples as it ends"
    )
    args = parser.parse_args(argv)
    if args.streams is None:
        args.streams = "ratings" if args.paced else "text,ratings,join"
    chosen = set(args.streams.split(","))
    if not chosen or not chosen <= {"text", "ratings", "join"}:
        parser.error(f"--streams takes text, ratings and join, got {args.streams!r}")
    if args.paced and "join" in chosen:
        parser.error("--paced takes --streams text and ratings (the learner's rate)")
    if args.paced and min(args.duration, args.start_rate, args.send_every) <= 0:
        parser.error("--duration, --start-rate and --send-every must be positive")
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, got {args.passes}")

    workdir = Path(tempfile.mkdtemp(prefix="drex-stream-bench-"))
    try:
        if args.dataset == "sample":
            users = max(10, args.interactions // 12)
            data = write_sample(workdir / "sample.jsonl", users=users)
        else:
            data = Path(args.dataset)
        base = load_interactions(data).interactions
        rows = replay(base[: args.interactions], args.passes)
        import torch

        from drex_model.text import TextEncoder

        torch.set_num_threads(args.threads)
        encoder = TextEncoder(args.encoder or None, threads=args.threads)  # as the worker
        # the encoder alone just before and just after the text stream: on shared
        # machines the speed drifts over minutes, and the ratio uses their mean
        roles = ["all"] if args.layout == "one" else ["join", "learn"]
        runs: dict[str, Run] = {}
        if args.paced:
            if "text" in chosen:
                before = encoder_rate(rows, args, encoder)
            probes = paced_runs(chosen, base, args, workdir)
            if "ratings" in chosen:
                learner_per_s = learner_rate(rows, args, encoder)
            chosen = set()  # no burst runs
        if "text" in chosen:
            before = encoder_rate(rows, args, encoder)
            runs["text"] = stream_run("text+rating", rows, 0.0, args, workdir, roles)
            after = encoder_rate(rows, args, encoder)
        if "ratings" in chosen:
            runs["ratings"] = stream_run("rating-only", rows, 1.0, args, workdir, roles)
        if "join" in chosen:
            runs["join"] = stream_run("join", rows, 0.0, args, workdir, ["join"])
            runs["join1"] = stream_run(
                "join 1 msg/step", rows, 0.0, args, workdir, ["join"], join_batch=1
            )
        if "ratings" in chosen:
            learner_per_s = learner_rate(rows, args, encoder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{Path(args.dataset).name}: {len(rows)} interactions"
        + (f" ({args.passes} passes)" if args.passes > 1 else "")
        + f", torch threads {args.threads} encoding / {args.learn_threads or args.threads} "
        "learning, "
        f"layout {args.layout}, batch {args.batch_size}, "
        f"join window {args.join_window} s, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    if args.paced:
        import paced

        print(
            f"paced: {args.duration:.0f} s per probe, lag and backlog slope tolerance "
            f"{args.tolerance:.0%} of the rate, all learned within "
            f"{args.max_behind:.0f} s of the last send; base stream {len(base)} interactions"
        )
        if "ratings" in probes:
            paced.print_table("rating-only", probes["ratings"], learner_per_s, "learner alone")
        if "text" in probes:
            paced.print_table("text+rating", probes["text"], before[0], "encoder alone (reviews)")
        return 0
    print(
        f"{'stream':<17}{'events':>8}{'seconds':>9}{'events/s':>10}{'inter./s':>10}"
        f"{'encode s':>9}{'learn s':>9}{'store s':>9}{'2nd half/s':>11}"
    )
    for r in runs.values():
        half = "-" if r.second_half is None else f"{r.second_half:.0f}"
        print(
            f"{r.name:<17}{r.events:>8}{r.seconds:>9.1f}{r.events / r.seconds:>10.0f}"
            f"{r.rate:>10.0f}{r.encode_seconds:>9.1f}{r.learn_seconds:>9.1f}"
            f"{r.persist_seconds:>9.1f}{half:>11}"
        )
    print_cpu(runs.values())
    if "text" in runs:
        reviews_per_s = (before[0] + after[0]) / 2
        print(
            f"encoder alone: {reviews_per_s:.1f} reviews/s (before the text stream "
            f"{before[0]:.1f}, after {after[0]:.1f}; {after[1]:.0f} tokens/s)"
        )
        print_ratios("text+rating", runs["text"], reviews_per_s, "encoder alone")
    if "ratings" in runs:
        print(f"learner alone (ratings only): {learner_per_s:.0f} interactions/s")
        print_ratios("rating-only", runs["ratings"], learner_per_s, "learner alone")
    if "join" in runs:
        speedup = runs["join"].rate / runs["join1"].rate
        print(f"join, batched steps / one message per step: {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
