"""Recordings for the fleet tests, written by the real flight recorder from the real policy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeliquid.node.recorder import FlightRecorder
from edgeliquid.runtime.policy import load

MODEL = Path(__file__).resolve().parent.parent / "edgeliquid" / "data" / "cartpole_ncp.onnx"


def write_recording(
    path,
    steps=300,
    seed=0,
    perturb_at=None,
    perturb=0.0,
    encoding="protobuf",
    reset_at=(150,),
    model=MODEL,
    chunks=False,
):
    """Steps of the shipped policy on random inputs (state resets at ``reset_at``); the recorded
    output is offset by ``perturb`` from step ``perturb_at`` on (what another model would do)."""
    pol = load(model)
    rng = np.random.default_rng(seed)
    meta = {"dtype": "float32", "model": str(model)}
    # chunks: many small chunks (flushes while writing), as a long run on a robot has
    rec = FlightRecorder(path, 4, 1, 1, meta, encoding=encoding, flush_s=0.01 if chunks else 1.0)
    rec.start()
    t = 10**12 + seed * 10**10
    for k in range(steps):
        if k in reset_at:
            pol.reset()
        x = rng.uniform(-1, 1, 4).astype(np.float32)
        el = float(rng.uniform(0.8, 1.2))
        y = pol.step(x, el).astype(np.float64)
        if perturb_at is not None and k >= perturb_at:
            y = y + perturb
        t += 10_000_000
        if chunks and k % 100 == 99:
            time.sleep(0.03)  # the writer drains and flushes: a new chunk
        rec.record_step(
            k + 1, k * 10_000, el, 0, k in reset_at, x, y, y * 10, (t, t + 1, t + 2, t + 3, t + 4)
        )
    rec.close()
    return Path(path)
