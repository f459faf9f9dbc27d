"""The torch device a name stands for: ``"auto"`` is resolved here and nowhere else."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when CUDA is available, else ``"cpu"``; any other name
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``) as it is.

    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    True
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def intra_op_threads(requested: int, encoding: bool) -> int:
    """torch intra-op threads for a streaming worker's learner: ``requested`` when it is
    set (> 0); else every core the process may use while it encodes reviews (the text
    path's bottleneck), and one fewer while it learns, so that the event loop (joining,
    consuming, acknowledging) keeps a core of its own instead of stalling torch's
    parallel regions (docs/results.md: 700-800 -> 1,000 rating-only interactions/s
    sustained on 2 cores).

    >>> intra_op_threads(3, encoding=False), intra_op_threads(0, encoding=True) >= 1
    (3, True)
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return cores if encoding else max(1, cores - 1)
