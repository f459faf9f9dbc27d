"""The stream benchmark's paced mode: its verdict on a rate, and its search over rates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from drex_model.types import Interaction
from streams.plan import plan_events

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "paced.py"


def _paced() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paced", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


paced = _paced()


def samples(rate: float, learn: float, duration: float, start_lag: float = 0.0) -> list:
    """One sample a second: ``rate`` sent per second, ``learn`` learned per second (at
    most what was sent), the lag what is sent and not learned."""
    out = []
    for t in range(int(duration) + 1):
        sent = int(rate * t)
        learned = min(sent, learn * t)
        out.append(paced.Sample(float(t), sent, learned, start_lag + sent - learned))
    return out


def test_slope_is_least_squares() -> None:
    assert paced.slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert paced.slope([(0, 0), (1, 1), (2, 0), (3, 1)]) == pytest.approx(0.2)
    assert paced.slope([(1, 5)]) == 0.0
    assert paced.slope([(1, 5), (1, 7)]) == 0.0


def test_a_rate_the_worker_keeps_up_with_is_sustainable() -> None:
    probe = paced.judge(200, 1.0, 60, samples(200, 200, 60), catch_up=1.5)
    assert probe.sustainable and probe.why == ""
    assert probe.produced == pytest.approx(200)
    assert probe.learned == pytest.approx(200)
    assert probe.lag_slope == pytest.approx(0.0)
    assert probe.behind == 0


def test_a_growing_lag_is_not_sustainable_even_when_all_is_learned_in_the_end() -> None:
    # the worker takes 85% of the rate: lag and backlog grow by 30/s (10% of 200/s: 20)
    probe = paced.judge(200, 1.0, 60, samples(200, 170, 60), catch_up=10.0)
    assert not probe.sustainable
    assert probe.lag_slope == pytest.approx(30.0)
    assert probe.backlog_slope == pytest.approx(30.0)
    assert probe.why == "lag grows 30.0/s > 20.0/s; backlog grows 30.0/s > 20.0/s"
    assert probe.behind == pytest.approx(1800)


def test_the_lag_counts_only_from_four_readings_in_the_second_half() -> None:
    # the worker reads the lag every 5 s: a 20 s window has three readings in its second half
    window = samples(100, 100, 20)
    for s in window:
        s.lag = 1000.0 * (s.t // 5)  # steps up by 1000 every 5 s
    assert paced.readings([(t, t) for t in (0, 1, 5, 6, 9.9, 10.5)]) == [
        (0, 0),
        (5, 5),
        (10.5, 10.5),
    ]
    probe = paced.judge(100, 1.0, 20, window, catch_up=1.0)
    assert probe.lag_slope is None and probe.sustainable
    long = samples(100, 100, 60)
    for s in long:
        s.lag = 1000.0 * (s.t // 5)
    probe = paced.judge(100, 1.0, 60, long, catch_up=1.0)
    assert probe.lag_slope == pytest.approx(200.0)
    assert not probe.sustainable and probe.why.startswith("lag grows")


def test_a_backlog_that_drains_in_the_second_half_is_sustainable() -> None:
    # a slow start (a backlog of 500), then the worker gains 50/s on it
    window = [
        paced.Sample(float(t), 200 * t, 200 * t - max(0.0, 500 - 50 * t), max(0.0, 500 - 50 * t))
        for t in range(61)
    ]
    assert paced.judge(200, 1.0, 60, window, catch_up=1.0).sustainable


def test_tolerance_is_a_share_of_the_event_rate() -> None:
    # text+rating: two events per interaction; the lag counts events
    window = samples(100, 100, 60)
    for s in window:
        s.lag += 15.0 * s.t  # grows 15 events/s: under 10% of 200 events/s, over 10% of 100
    assert paced.judge(100, 2.0, 60, window, catch_up=1.0).sustainable
    assert not paced.judge(100, 1.0, 60, window, catch_up=1.0).sustainable


def test_a_producer_that_falls_short_or_a_learner_that_never_catches_up_fails() -> None:
    short = paced.judge(400, 1.0, 60, samples(300, 300, 60), catch_up=1.0)
    assert not short.sustainable and "producer reached 300/s" in short.why
    late = paced.judge(200, 1.0, 60, samples(200, 200, 60), catch_up=None, max_behind=15)
    assert not late.sustainable and "15 s after the last send" in late.why


def fake_probe(capacity: float, tried: list[float]):
    def run(rate: float):
        tried.append(rate)
        ok = rate <= capacity
        return paced.Probe(rate, rate, min(rate, capacity), 0, 0, 0, 0, 1.0, ok, "" if ok else "x")

    return run


def test_search_doubles_then_bisects() -> None:
    tried: list[float] = []
    probes = paced.search(fake_probe(700, tried), 200, max_probes=8, bisect_steps=2)
    assert tried == [200, 400, 800, 600, 700]
    assert paced.best(probes).rate == 700


def test_search_halves_when_the_first_rate_fails() -> None:
    tried: list[float] = []
    probes = paced.search(fake_probe(120, tried), 200, max_probes=8, bisect_steps=2)
    assert tried == [200, 100, 150, 125]
    assert paced.best(probes).rate == 100


def test_search_stops_at_max_probes_and_min_rate() -> None:
    tried: list[float] = []
    paced.search(fake_probe(10_000, tried), 200, max_probes=3)
    assert tried == [200, 400, 800]
    tried.clear()
    probes = paced.search(fake_probe(1, tried), 200, max_probes=8, min_rate=40)
    assert tried == [200, 100, 50]
    assert paced.best(probes) is None


def test_pairs_sent_counts_interactions_not_events() -> None:
    rows = [
        Interaction("ann", "amp", 5.0, "warm tone", 10.0),
        Interaction("bob", "amp", 4.0, "loud", 12.0),
    ]
    events = plan_events(rows, seed=0).events  # a review and a rating each
    assert len(events) == 4
    assert paced.pairs_sent(events) == [0, 1, 1, 2, 2]


def test_total_lag_sums_the_partitions_but_join_ticks() -> None:
    scraped = {
        'drex_consumer_lag_messages{topic="ratings",partition="0"}': 5.0,
        'drex_consumer_lag_messages{topic="ratings",partition="1"}': 2.0,
        'drex_consumer_lag_messages{topic="interactions",partition="0"}': 10.0,
        'drex_consumer_lag_messages{topic="join-ticks",partition="0"}': 3.0,
        "drex_learner_interactions": 100.0,
    }
    assert paced.total_lag(scraped) == 17.0
