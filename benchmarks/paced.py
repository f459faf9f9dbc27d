"""The paced mode of ``stream_bench.py``: the highest rate the streaming learner sustains.

A probe sends a stream at a fixed rate (interactions/s) for a duration to a fresh broker
and worker (:func:`stream_bench.workers`), scrapes the worker every second meanwhile
(the consumer lag, ``drex_consumer_lag_messages`` summed over the partitions but
``join-ticks``, which the join's timer writes; and the interactions in the learner
store, ``drex_learner_interactions``), then waits up to ``max_behind`` seconds for the
learner to hold everything sent (and reads ``drex_producer_buffer_full_total``, the
worker's back-pressure events, for the table). A rate is *sustainable* when

* the producer reached it (at least 95% of the events it was to send: on one machine
  the producer shares the cores with the worker),
* neither the lag nor the backlog kept growing over the second half of the window: the
  slope of a least-squares line through the total lag (messages) is at most
  ``tolerance`` (10%) of the event rate, and through the backlog (interactions sent and
  not yet in the learner store, exact at every scrape) at most ``tolerance`` of the
  rate; a backlog that grows at 10% of the rate is a worker that takes 90% of it. The
  worker reads the lag every 5 s from offsets committed every 2.8 s, and an
  interaction in flight counts on two topics (its rating before the join commits,
  then the interaction before the learner commits): the lag moves in steps as large
  as several seconds of the stream, so its slope is taken through one point per 5 s
  and only from four such points in the second half on; the backlog is the finer
  signal,
* and the learner caught up: everything sent was learned within ``max_behind`` seconds
  of the last send (the join window, a take's ``within`` and a micro-batch are the
  latency a sustained stream pays).

:func:`search` starts at a rate, doubles it until a probe fails (halves it when the
first one fails), then bisects between the highest pass and the lowest failure. A 20 s
smoke run holds at most three lag points in its second half (no lag slope); the default
window is 120 s.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from streams.metrics import scrape
from streams.plan import Event
from streams.producer import EventProducer

LAG = "drex_consumer_lag_messages{"
LEARNED = "drex_learner_interactions"
BUFFER_FULL = "drex_producer_buffer_full_total"  # faust's producer buffer full, counted
SAMPLE_SECONDS = 1.0
PRODUCER_SHARE = 0.95  # of the events due that the producer must have sent
TOLERANCE = 0.1  # the largest growth of the lag and of the backlog, a share of the rate
SEND_EVERY = 0.05  # seconds between the producer's sends of the events due
LAG_SECONDS = 5.0  # between two lag readings of the worker (streams/lag.py)
MIN_LAG_READINGS = 4  # in the second half (the first point too), for the lag slope to count


@dataclass
class Sample:
    t: float  # seconds since the first send
    sent: int  # interactions sent so far (distinct pairs among the events sent)
    learned: float  # interactions in the learner store
    lag: float  # messages the group has not committed, all partitions but join-ticks


@dataclass
class Probe:
    rate: float  # interactions/s asked for
    produced: float  # interactions/s the producer sent over the window
    learned: float  # interactions/s learned over the second half (least squares)
    lag_end: float  # the last lag reading of the window
    lag_slope: float | None  # messages/s over the second half; None: too few readings
    backlog_slope: float  # interactions/s: sent minus learned, over the second half
    behind: float  # interactions sent and not learned at the end of the window
    catch_up: float | None  # seconds after the last send until all was learned; None: not
    sustainable: bool
    why: str  # what failed, or "" when sustainable
    samples: list[Sample] = field(default_factory=list, repr=False)  # the window's
    buffer_full: float | None = None  # the workers' back-pressure events, to the end


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 for fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def total_lag(metrics: dict[str, float]) -> float:
    """The sum of the lag series of a scrape, ``join-ticks`` left out."""
    return sum(v for k, v in metrics.items() if k.startswith(LAG) and 'topic="join-ticks"' not in k)


def pairs_sent(events: Sequence[Event]) -> list[int]:
    """``out[i]``: distinct (user, item) pairs among the first ``i`` events, which the
    learner must hold once they are joined (a lone half becomes an interaction too)."""
    out = [0]
    seen: set[tuple[str, str]] = set()
    for _topic, _key, value in events:
        event = orjson.loads(value)
        seen.add((event["user_id"], event["item_id"]))
        out.append(len(seen))
    return out


def readings(
    points: Sequence[tuple[float, float]], every: float = LAG_SECONDS
) -> list[tuple[float, float]]:
    """One point per ``every`` seconds (the first, then each at least ``every`` after the
    last kept): the worker reads the lag every 5 s, so a scrape a second repeats each
    reading about five times, which would weigh a reading by how often it was scraped."""
    out: list[tuple[float, float]] = []
    for point in points:
        if not out or point[0] - out[-1][0] >= every:
            out.append(point)
    return out


def judge(
    rate: float,
    events_per_interaction: float,
    duration: float,
    samples: Sequence[Sample],
    catch_up: float | None,
    tolerance: float = TOLERANCE,
    max_behind: float = 15.0,
) -> Probe:
    """A probe's figures from the samples of its window, and whether ``rate`` is
    sustainable (the module doc)."""
    window = [s for s in samples if s.t <= duration + SAMPLE_SECONDS]
    last = window[-1] if window else Sample(0.0, 0, 0.0, 0.0)
    half = [s for s in window if s.t >= duration / 2]
    produced = last.sent / duration if duration > 0 else 0.0
    learned = slope([(s.t, s.learned) for s in half])
    lag_points = readings([(s.t, s.lag) for s in half])
    lag_slope = slope(lag_points) if len(lag_points) >= MIN_LAG_READINGS else None
    backlog_slope = slope([(s.t, s.sent - s.learned) for s in half])
    lag_limit = max(1.0, tolerance * rate * events_per_interaction)  # the lag counts events
    backlog_limit = max(1.0, tolerance * rate)
    why = []
    if produced < PRODUCER_SHARE * rate:
        why.append(f"producer reached {produced:.0f}/s")
    if lag_slope is not None and lag_slope > lag_limit:
        why.append(f"lag grows {lag_slope:.1f}/s > {lag_limit:.1f}/s")
    if backlog_slope > backlog_limit:
        why.append(f"backlog grows {backlog_slope:.1f}/s > {backlog_limit:.1f}/s")
    if catch_up is None:
        why.append(f"not learned {max_behind:.0f} s after the last send")
    return Probe(
        rate,
        produced,
        learned,
        last.lag,
        lag_slope,
        backlog_slope,
        max(0.0, last.sent - last.learned),
        catch_up,
        not why,
        "; ".join(why),
        list(window),
    )


class Progress:
    """What the producer has sent, read by the sampler thread."""

    def __init__(self) -> None:
        self.events = 0
        self.started = 0.0  # monotonic time of the first send


async def paced_send(
    url: str,
    events: Sequence[Event],
    event_rate: float,
    duration: float,
    progress: Progress,
    every: float = SEND_EVERY,
) -> None:
    """Send ``events`` in order, event ``i`` at ``i / event_rate`` seconds after the first,
    for ``duration`` seconds: every ``every`` seconds the events due go out together, in
    the few requests the client makes of them, as a client lingering that long sends them.
    The generator shares the cores with what it measures: ticks of 5 ms sent most text
    events in a request of their own, which cost the broker and the generator ~1.1 ms of
    CPU per text interaction more than ticks of 50 ms (docs/results.md)."""
    async with EventProducer(url) as producer:
        progress.started = time.monotonic()
        while True:
            elapsed = time.monotonic() - progress.started
            if elapsed >= duration or progress.events >= len(events):
                break
            due = min(len(events), math.floor(elapsed * event_rate) + 1)
            while progress.events < due:
                topic, key, value = events[progress.events]
                await producer.send_raw(topic, key, value)
                progress.events += 1
            await asyncio.sleep(every)


class Sampler(threading.Thread):
    """Scrapes the workers every :data:`SAMPLE_SECONDS` while the producer sends: the
    lag summed over all of them (each reports the partitions it is assigned), the
    learned interactions from the one on ``ports[0]``."""

    def __init__(self, ports: Sequence[int], progress: Progress, pairs: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.ports, self.progress, self.pairs = list(ports), progress, pairs
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def sample(self) -> Sample | None:
        scrapes = [scrape(port) for port in self.ports]
        if not scrapes[0] or not self.progress.started:
            return None
        s = Sample(
            time.monotonic() - self.progress.started,
            self.pairs[self.progress.events],
            scrapes[0].get(LEARNED, 0.0),
            sum(total_lag(m) for m in scrapes),
        )
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            self.sample()


def probe(
    rate: float,
    events: Sequence[Event],
    url: str,
    ports: Sequence[int],
    proc: object,
    duration: float,
    tolerance: float = TOLERANCE,
    max_behind: float = 15.0,
    send_every: float = SEND_EVERY,
) -> Probe:
    """Send ``events`` at ``rate`` interactions/s for ``duration`` seconds to the workers
    scraped on ``ports`` (the learner's first, its process ``proc``), and judge the rate."""
    pairs = pairs_sent(events)
    per_interaction = len(events) / pairs[-1]
    progress = Progress()
    sampler = Sampler(ports, progress, pairs)
    sampler.start()
    try:
        rate_events = rate * per_interaction
        asyncio.run(paced_send(url, events, rate_events, duration, progress, send_every))
        sent_at = time.monotonic()
        sampler.sample()  # the end of the window
    finally:
        sampler.done.set()
        sampler.join()
    catch_up = None
    target = pairs[progress.events]
    while time.monotonic() - sent_at <= max_behind:
        if proc.poll() is not None:  # type: ignore[attr-defined]
            break
        m = scrape(ports[0])
        if m.get(LEARNED, 0.0) >= target:
            catch_up = time.monotonic() - sent_at
            break
        time.sleep(0.25)
    samples = sampler.samples
    result = judge(rate, per_interaction, duration, samples, catch_up, tolerance, max_behind)
    result.buffer_full = sum(scrape(port).get(BUFFER_FULL, 0.0) for port in ports)
    return result


def search(
    run_probe: Callable[[float], Probe],
    start: float,
    max_probes: int = 8,
    bisect_steps: int = 2,
    min_rate: float = 10.0,
) -> list[Probe]:
    """Probes from ``start``: doubling until one fails (halving while the first ones
    fail, down to ``min_rate``), then bisecting between the highest sustainable rate and
    the lowest failed one ``bisect_steps`` times; at most ``max_probes`` in all."""
    probes: list[Probe] = []

    def run(rate: float) -> bool:
        probes.append(run_probe(round(rate)))
        return probes[-1].sustainable

    ok: float | None = None
    bad: float | None = None
    rate = start
    while len(probes) < max_probes:
        if run(rate):
            ok = rate
            if bad is not None:
                break
            rate *= 2
        else:
            bad = rate
            if ok is not None:
                break
            rate /= 2
            if rate < min_rate:
                break
    steps = 0
    while ok is not None and bad is not None and steps < bisect_steps:
        if len(probes) >= max_probes:
            break
        rate = (ok + bad) / 2
        if round(rate) in (round(ok), round(bad)):
            break
        if run(rate):
            ok = rate
        else:
            bad = rate
        steps += 1
    return probes


def best(probes: Sequence[Probe]) -> Probe | None:
    """The highest sustainable rate among the probes (None: none was)."""
    passed = [p for p in probes if p.sustainable]
    return max(passed, key=lambda p: p.rate) if passed else None


def print_table(name: str, probes: Sequence[Probe], alone: float | None, ceiling: str) -> None:
    """The probes in the order run, the sustainable throughput and its ratio to the
    ceiling measured alone."""
    print(
        f"{name}: {'rate':>6}{'sent/s':>8}{'learned/s':>10}{'lag end':>9}{'lag slope':>10}"
        f"{'backlog slope':>14}{'behind':>8}{'catch-up s':>11}{'buffer full':>12}  sustainable"
    )
    for p in probes:
        catch = "-" if p.catch_up is None else f"{p.catch_up:.1f}"
        lag = "-" if p.lag_slope is None else f"{p.lag_slope:.1f}"
        full = "-" if p.buffer_full is None else f"{p.buffer_full:.0f}"
        verdict = "yes" if p.sustainable else f"no ({p.why})"
        print(
            f"{'':<{len(name) + 2}}{p.rate:>6.0f}{p.produced:>8.0f}{p.learned:>10.0f}"
            f"{p.lag_end:>9.0f}{lag:>10}{p.backlog_slope:>14.1f}{p.behind:>8.0f}{catch:>11}{full:>12}"
            f"  {verdict}"
        )
    top = best(probes)
    if top is None:
        print(
            f"{name}: no rate tried was sustainable"
            + (f"; {ceiling}: {alone:.0f}/s" if alone else "")
        )
        return
    line = f"{name} sustainable throughput: {top.rate:.0f} interactions/s"
    if alone:
        line += f"; {ceiling}: {alone:.0f}/s; ratio {top.rate / alone:.2f}"
    print(line)


def print_trace(probe: Probe) -> None:
    """A probe's samples: seconds, interactions sent and learned, the lag."""
    print(f"    {'t':>6}{'sent':>8}{'learned':>9}{'lag':>8}")
    for s in probe.samples:
        print(f"    {s.t:>6.1f}{s.sent:>8}{s.learned:>9.0f}{s.lag:>8.0f}")
