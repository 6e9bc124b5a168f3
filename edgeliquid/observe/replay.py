"""``edgeliquid replay``: a recorded run's inputs through a policy offline, compared step by step.

Feeds the recorded model inputs and elapsed times (and the recorded state resets)
through the recorded model, or another one, on any backend. Same model and backend:
the outputs must match bit for bit. Otherwise: per-channel max/mean error and the
first divergent step, so a new model can be checked against yesterday's run.
A recording the recorder never closed (a crash) is replayed up to its last complete record.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecordingError
from ..node.recorder import read_recording, truncation_note
from ..runtime.policy import load


def replay(
    recording: str | os.PathLike,
    model: str | os.PathLike | None = None,
    backend: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Replay ``recording``; returns the comparison (see module docstring)."""
    rec = read_recording(recording)
    meta, steps = rec["metadata"], rec["steps"]
    note = truncation_note(recording, rec)
    if not steps:
        raise RecordingError(f"{note}; no steps to replay" if note else f"{recording}: no steps recorded")
    path = Path(model) if model else Path(meta.get("model", ""))
    if not path.is_file():
        if model:
            raise RecordingError(f"--model {model}: no such file")
        raise RecordingError(f"{recording}: recorded model {str(path)!r} not found; pass --model")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    same_model = sha == meta.get("model_sha256")
    backend = backend or meta.get("backend", "cpu")
    dt = np.dtype(dtype or meta.get("dtype", "float32"))
    pol = load(path, backend=backend, dtype=dt)
    n_x, n_y = len(steps[0]["x"]), len(steps[0]["y"])
    if (pol.n_inputs, pol.n_outputs) != (n_x, n_y):
        raise RecordingError(
            f"model {path} has {pol.n_inputs} inputs / {pol.n_outputs} outputs but recording "
            f"{recording} holds {n_x} inputs / {n_y} outputs per step; replay needs a model of the same shape"
        )
    xs = np.array([s["x"] for s in steps], dt)
    el = np.array([s["elapsed"] for s in steps], np.float64)
    resets = np.array([bool(s.get("reset", 0)) for s in steps])
    want = np.array([s["y"] for s in steps], np.float64)
    got = np.empty_like(want)
    for k in range(len(steps)):
        if resets[k]:
            pol.reset()
        got[k] = pol.step(xs[k], float(el[k]))
    exact = bool(np.array_equal(got.astype(dt), want.astype(dt)))
    diff = np.abs(got - want)
    bad = np.flatnonzero(diff.max(axis=1) > 0)
    return {
        "recording": str(recording),
        "truncated": bool(rec["truncated"]),
        "note": note,
        "model": str(path),
        "same_model": same_model,
        "backend": backend,
        "recorded_backend": meta.get("backend"),
        "steps": len(steps),
        "resets": int(resets.sum()),
        "bit_exact": exact,
        "first_divergent_step": int(bad[0]) if bad.size else None,
        "max_abs_error": diff.max(axis=0).tolist(),
        "mean_abs_error": diff.mean(axis=0).tolist(),
    }


def format_report(r: dict[str, Any]) -> str:
    head = (
        f"replayed {r['steps']} steps ({r['resets']} state resets) of {r['recording']}\n"
        f"  model {r['model']} ({'the recorded one' if r['same_model'] else 'NOT the recorded model'}), "
        f"backend {r['backend']} (recorded: {r['recorded_backend']})"
    )
    if r.get("note"):
        head = f"note: {r['note']}\n{head}"
    if r["bit_exact"]:
        return head + "\n  outputs match bit for bit"
    lines = [head, f"  outputs differ; first divergent step: {r['first_divergent_step']}"]
    for ch, (mx, mean) in enumerate(zip(r["max_abs_error"], r["mean_abs_error"])):
        lines.append(f"  channel {ch}: max |error| {mx:.3g}, mean {mean:.3g}")
    return "\n".join(lines)
