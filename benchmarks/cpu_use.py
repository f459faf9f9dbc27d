"""Where a streaming benchmark's CPU goes: per process, per interaction learned.

``stream_bench.py`` reads each process's CPU seconds before the first send and after
the last interaction learned (:func:`cpu_by_process`), and prints the difference per
interaction with the cores it kept busy (:func:`cpu_line`). Linux only (``/proc``);
elsewhere every figure is 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process, from Linux's /proc (0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_by_process(workers: Any) -> dict[str, float]:
    """CPU seconds so far of the broker, of each worker, and of this process (the load
    generator and the scrapes); ``workers``: ``stream_bench.Workers``."""
    out = {"broker": cpu_seconds(workers.broker.pid)}
    roles = workers.roles
    for n, (role, proc) in enumerate(zip(roles, workers.procs, strict=True)):
        name = f"worker {role}" if roles.count(role) == 1 else f"worker {role} {n}"
        out[name] = cpu_seconds(proc.pid)
    out["generator"] = time.process_time()
    return out


def cpu_since(workers: Any, before: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent since ``before`` (:func:`cpu_by_process`)."""
    return {k: v - before[k] for k, v in cpu_by_process(workers).items()}


def cpu_line(cpu: dict[str, float], interactions: float, seconds: float) -> str:
    """CPU ms per interaction learned, by process, and the cores busy over ``seconds``."""
    per = 1e3 / max(interactions, 1.0)
    parts = ", ".join(f"{k} {v * per:.2f}" for k, v in cpu.items())
    total = sum(cpu.values())
    return (
        f"CPU ms per interaction: {parts}; total {total * per:.2f} "
        f"({total / seconds:.2f} cores busy of {os.cpu_count()})"
    )
