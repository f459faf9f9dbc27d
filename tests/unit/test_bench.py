"""The benchmark's sustained stream: each pass new users, items and reviews, later."""

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from drex_model.types import Interaction

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_bench.py"


def _stream_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stream_bench", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_replay_passes_are_disjoint_and_in_time_order() -> None:
    rows = [
        Interaction("ann", "amp", 5.0, "warm tone", 10.0),
        Interaction("bob", "amp", 4.0, None, 12.0),
        Interaction("ann", "cable", None, "short", 15.0),
    ]
    bench = _stream_bench()
    assert bench.replay(rows, 1) == rows
    out = bench.replay(rows, 3)
    assert len(out) == 9
    assert [r.timestamp for r in out] == sorted(r.timestamp for r in out)
    for k in range(3):
        part = out[3 * k : 3 * k + 3]
        assert {r.user for r in part} == {f"ann~{k}", f"bob~{k}"}
        assert [r.rating for r in part] == [5.0, 4.0, None]
    texts = [r.text for r in out if r.text]
    assert len(set(texts)) == len(texts) == 6  # no pass finds another's reviews cached
    assert out[4].text is None


def test_second_half_rate_leaves_the_opening_out() -> None:
    bench = _stream_bench()
    # a slow opening (10 in 10 s), then 90 more in 9 s: 10/s from half (50 at t=14) on
    trace = [(0.0, 0.0), (10.0, 10.0), (12.0, 30.0), (14.0, 50.0), (19.0, 100.0)]
    assert bench.second_half_rate(trace) == 10.0
    assert bench.second_half_rate([(3.0, 5.0)]) is None  # one scrape spans no time
    assert bench.second_half_rate([]) is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_cpu_seconds_reads_a_process_cpu_time() -> None:
    spec = importlib.util.spec_from_file_location("cpu_use", _PATH.parent / "cpu_use.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = bench.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU
        pass
    spent = bench.cpu_seconds(os.getpid()) - before
    assert 0.2 <= spent <= 1.0  # clock ticks of 10 ms
    assert bench.cpu_seconds(None) == 0.0  # no process: nothing to read
