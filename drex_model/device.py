"""The torch device a name stands for: ``"auto"`` is resolved here and nowhere else."""

from __future__ import annotations

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
