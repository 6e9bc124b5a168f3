"""Compiled policies kept per process and lent to one task at a time.

A policy holds its state and scratch buffers, so a task borrows one for as long as it steps it
(two tasks on threads of one process never share one); policies are loaded once per process
(a worker's, or the driver's) and reset by the borrower, not reloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

MAX_KEYS = 32  # (model, dtype, batch) combinations kept; more: the pool starts again

_LOCK = threading.Lock()
_FREE: dict[tuple[bytes, str, int | None], list[Any]] = {}


@contextmanager
def lend(blob: bytes, name: str, dtype: Any, batch: int | None = None) -> Iterator[Any]:
    """A ``cpu`` policy of the model file ``blob`` (``name`` for errors), this task's alone
    until the block ends; its state is whatever the last borrower left: reset it."""
    from ..model.file import read_bytes
    from ..runtime.policy import from_model

    # the bytes themselves are the key: Python caches a bytes object's hash, and a lookup
    # compares a few kB at most (no digest of the model per call)
    key = (blob, np.dtype(dtype).str, batch)
    with _LOCK:
        free = _FREE.get(key)
        pol = free.pop() if free else None
    if pol is None:
        pol = from_model(read_bytes(blob, name), "cpu", np.dtype(dtype), batch=batch)
    try:
        yield pol
    finally:
        with _LOCK:
            if key not in _FREE and len(_FREE) >= MAX_KEYS:
                _FREE.clear()
            _FREE.setdefault(key, []).append(pol)


def loaded() -> int:
    """Policies held by the pool now (not counting those lent out)."""
    with _LOCK:
        return sum(len(v) for v in _FREE.values())
