"""Resident memory the C heap holds after a large, short-lived allocation."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere): the encoder's and torch's short-lived buffers of a large take would
    otherwise stay in the worker's resident memory."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
