"""``edgeliquid tune``: which ODE solver and how many unfolds, measured on this machine.

The trained integration (the model file's own solver and unfolds, or, for a converted file,
the one its provenance names) and every candidate (solver x unfolds) step the same input
stream with the same elapsed times: a flight recording's, or seeded random inputs at a
nominal elapsed time. For each candidate:

* output error against the trained integration, in float64 (cpu backend), both absolute
  (max over steps and channels) and relative (per channel divided by the trained output's
  largest magnitude, then the max over channels): tolerance applies to the relative one;
* µs per step on the cpu backend in float32, the single-step path (``policy.step``), after
  warm-up: each step timed alone, candidates round-robin in ``repeats`` blocks each (a shared
  machine's drift hits them alike), the median step kept;
* stable: every elapsed time of the stream within the solver's Theorem 1 bound
  (:func:`edgeliquid.model.guarantees.stability`).

The Pareto front (relative error vs µs per step, stable candidates) is marked, and the
cheapest stable candidate within tolerance is chosen (the trained integration itself when
nothing cheaper is).
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import EdgeliquidError, InputError, RecordingError
from ..model.cell import SOLVER_NAMES, LTCModel
from ..model.checks import MAX_UNFOLDS
from ..model.convert import check_integration, convert, trained_integration
from ..model.guarantees import stability
from ..runtime.policy import from_model

#: Backends: errors in float64, timing in float32 (what a robot runs).
ERROR_BACKEND = "cpu"
TIMING_BACKEND = "cpu"


@dataclass
class Stream:
    """The inputs every candidate steps: x [T, n_inputs], elapsed [T] (model time units) and
    the steps where the state is reset to zero (a recording's fail-safe recoveries)."""

    xs: np.ndarray
    elapsed: np.ndarray
    resets: np.ndarray
    source: str

    def segments(self) -> list[slice]:
        """Runs of steps between state resets (each starts from the zero state)."""
        starts = sorted({0, *np.flatnonzero(self.resets).tolist()})
        ends = starts[1:] + [len(self.xs)]
        return [slice(a, b) for a, b in zip(starts, ends) if b > a]


def random_stream(model: LTCModel, steps: int, elapsed: float = 1.0, seed: int = 0) -> Stream:
    """``steps`` seeded random inputs at a constant ``elapsed``: each input channel a standard
    normal low-pass filtered to a unit-variance AR(1) (coefficient 0.9), so that inputs move
    like sensor signals rather than jump like white noise."""
    if steps < 1:
        raise EdgeliquidError(f"--random: need at least 1 step, got {steps}")
    if not (math.isfinite(elapsed) and elapsed > 0):
        raise EdgeliquidError(f"--elapsed must be finite and > 0, got {elapsed!r}")
    rng = np.random.default_rng(seed)
    a = 0.9
    noise = rng.standard_normal((steps, model.config.n_inputs))
    xs = np.empty_like(noise)
    xs[0] = noise[0]
    for t in range(1, steps):
        xs[t] = a * xs[t - 1] + math.sqrt(1 - a * a) * noise[t]
    return Stream(
        xs,
        np.full(steps, float(elapsed)),
        np.zeros(steps, bool),
        f"{steps} random steps (AR(1) inputs, seed {seed}) at elapsed {elapsed:g}",
    )


def recording_stream(path: str | os.PathLike, model: LTCModel) -> Stream:
    """The model inputs, elapsed times and state resets of a flight recording (.mcap)."""
    from ..node.recorder import read_recording, truncation_note

    rec = read_recording(path)
    steps = rec["steps"]
    note = truncation_note(path, rec)
    if not steps:
        raise RecordingError(f"{note}; no steps to tune on" if note else f"{path}: no steps recorded")
    n_x = len(steps[0]["x"])
    if n_x != model.config.n_inputs:
        raise RecordingError(
            f"{path}: the recording holds {n_x} inputs per step, but {model.source} takes "
            f"{model.config.n_inputs}; tune needs a recording of this model's inputs"
        )
    xs = np.array([s["x"] for s in steps], np.float64)
    elapsed = np.array([s["elapsed"] for s in steps], np.float64)
    resets = np.array([bool(s.get("reset", 0)) for s in steps])
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(elapsed) & (elapsed > 0))):
        raise RecordingError(f"{path}: a recorded step has a non-finite input or a non-positive elapsed time")
    return Stream(xs, elapsed, resets, f"{path} ({len(steps)} recorded steps)")


@dataclass
class Candidate:
    """One row of the table (``--json`` gives these as objects)."""

    solver: str
    unfolds: int
    max_abs_err: float | None  # None: the state diverged (non-finite) on the stream
    rel_err: float | None
    us_per_step: float
    stable: bool
    pareto: bool = False
    chosen: bool = False
    trained: bool = False
    max_elapsed: float | None = None  # Theorem 1 bound on elapsed (None: unconditionally stable)
    speedup: float = 1.0  # trained µs per step / this one's


def _outputs(model: LTCModel, stream: Stream) -> np.ndarray | None:
    """Outputs of ``model`` over the stream in float64; None when the state diverges."""
    pol = from_model(model, ERROR_BACKEND, np.float64)
    ys = np.empty((len(stream.xs), model.config.n_outputs))
    with np.errstate(all="ignore"):
        for seg in stream.segments():
            pol.reset()
            try:
                ys[seg] = pol.run(stream.xs[seg], stream.elapsed[seg])
            except InputError:  # the kernel's "non-finite state": this integration diverged
                return None
    return ys if np.all(np.isfinite(ys)) else None


def _errors(ys: np.ndarray | None, want: np.ndarray) -> tuple[float | None, float | None]:
    if ys is None:
        return None, None
    diff = np.abs(ys - want).max(axis=0)
    scale = np.maximum(np.abs(want).max(axis=0), 1e-12)
    return float(diff.max()), float((diff / scale).max())


def _time_all(models: list[LTCModel], stream: Stream, repeats: int, block: int) -> list[float]:
    """µs per step of each model (float32, ``policy.step``), the median over every timed step:
    ``repeats`` round-robin blocks of ``block`` steps over the stream's first inputs, each
    step timed alone, so that a step the OS preempted is an outlier the median ignores.

    Each model steps with the stream's elapsed times clipped to half its own stability bound:
    a step costs the same whatever the elapsed time, and a diverging state would end the
    timing of an unstable candidate.
    """
    idx = np.arange(block) % len(stream.xs)
    xs = np.ascontiguousarray(stream.xs[idx], np.float32)
    runs = []
    for m in models:
        bound = stability(m)[m.config.solver]["max_elapsed"]
        el = [float(e) for e in np.minimum(stream.elapsed[idx], 0.5 * bound)]
        pol = from_model(m, TIMING_BACKEND, np.float32)
        rows = [xs[i] for i in range(block)]
        for x, e in zip(rows, el):  # warm-up: caches, branch predictors, the first call
            pol.step(x, e)
        runs.append((pol, list(zip(rows, el))))
    samples = [np.full((repeats, block), np.nan) for _ in models]
    clock = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside one candidate's block would bias its figure
    try:
        for rep in range(repeats):
            for k, (pol, pairs) in enumerate(runs):
                pol.reset()
                step, out = pol.step, samples[k][rep]
                try:
                    for i, (x, e) in enumerate(pairs):
                        t0 = clock()
                        step(x, e)
                        out[i] = clock() - t0
                except InputError:  # diverged even so: the rest of this block does not count
                    continue
    finally:
        if gc_was:
            gc.enable()
    return [float(np.nanmedian(s)) / 1000.0 if np.isfinite(s).any() else math.nan for s in samples]


def _mark_pareto(rows: list[Candidate]) -> None:
    ok = [r for r in rows if r.stable and r.rel_err is not None and math.isfinite(r.us_per_step)]
    for r in ok:
        r.pareto = not any(
            o is not r
            and o.rel_err <= r.rel_err
            and o.us_per_step <= r.us_per_step
            and (o.rel_err < r.rel_err or o.us_per_step < r.us_per_step)
            for o in ok
        )


def tune(
    model: LTCModel,
    stream: Stream,
    solvers: tuple[str, ...] = SOLVER_NAMES,
    max_unfolds: int = 12,
    tolerance: float = 1e-3,
    repeats: int = 7,
    block: int = 200,
) -> dict[str, Any]:
    """Every (solver, unfolds <= max_unfolds) against the trained integration on ``stream``.

    Returns ``{"model", "stream", "trained": {solver, unfolds}, "tolerance", "elapsed":
    {median, max}, "candidates": [Candidate...], "chosen": Candidate | None}``.

    Raises:
        EdgeliquidError: a CfC model (no ODE solver), bad solvers / max_unfolds / tolerance.
        ModelFormatError: the model's provenance keys are malformed.
    """
    if not isinstance(model, LTCModel):
        raise EdgeliquidError(
            f"{model.source}: a CfC model has no ODE solver to tune (its step is closed-form)"
        )
    if not 1 <= max_unfolds <= MAX_UNFOLDS:
        raise EdgeliquidError(f"tune: --max-unfolds must be in 1..{MAX_UNFOLDS}, got {max_unfolds}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise EdgeliquidError(f"tune: --tolerance must be finite and >= 0, got {tolerance!r}")
    if not solvers:
        raise EdgeliquidError("tune: --solvers names no solver")
    for s in solvers:
        check_integration(s, 1, "tune")
    t_solver, t_unfolds = trained_integration(model)
    grid = [(s, n) for s in dict.fromkeys(solvers) for n in range(1, max_unfolds + 1)]
    if (t_solver, t_unfolds) not in grid:
        grid.insert(0, (t_solver, t_unfolds))  # the baseline is always a row
    models = [convert(model, s, n) for s, n in grid]
    trained_ys = _outputs(models[grid.index((t_solver, t_unfolds))], stream)
    if trained_ys is None:
        raise EdgeliquidError(
            f"{model.source}: the trained integration ({t_solver}, {t_unfolds} unfolds) diverges on "
            f"{stream.source}; nothing to compare against"
        )
    us = _time_all(models, stream, repeats, block)
    e_max = float(stream.elapsed.max())
    rows = []
    for (s, n), m, t in zip(grid, models, us):
        if (s, n) == (t_solver, t_unfolds):
            ys = trained_ys
        else:
            ys = _outputs(m, stream)
        abs_err, rel_err = _errors(ys, trained_ys)
        bound = stability(m)[s]["max_elapsed"]
        rows.append(
            Candidate(
                solver=s,
                unfolds=n,
                max_abs_err=abs_err,
                rel_err=rel_err,
                us_per_step=t,
                stable=bool(e_max <= bound),
                trained=(s, n) == (t_solver, t_unfolds),
                max_elapsed=None if math.isinf(bound) else float(bound),
            )
        )
    base = next(r for r in rows if r.trained).us_per_step
    for r in rows:
        r.speedup = base / r.us_per_step if r.us_per_step > 0 else math.nan
    _mark_pareto(rows)
    fits = [r for r in rows if r.stable and r.rel_err is not None and r.rel_err <= tolerance]
    chosen = min(fits, key=lambda r: r.us_per_step) if fits else None
    if chosen is not None:
        chosen.chosen = True
    return {
        "model": model.source,
        "stream": stream.source,
        "steps": len(stream.xs),
        "elapsed": {"median": float(np.median(stream.elapsed)), "max": e_max},
        "trained": {"solver": t_solver, "unfolds": t_unfolds},
        "tolerance": tolerance,
        "timing": {"backend": TIMING_BACKEND, "dtype": "float32", "repeats": repeats, "block": block},
        "errors": {"backend": ERROR_BACKEND, "dtype": "float64"},
        "candidates": rows,
        "chosen": chosen,
    }


def json_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The table as plain objects (non-finite numbers as null)."""

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return [{k: clean(v) for k, v in asdict(r).items()} for r in result["candidates"]]


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "diverged" if v is None else format(v, fmt)


def format_table(result: dict[str, Any]) -> str:
    """The table ``edgeliquid tune`` prints."""
    t, tol = result["trained"], result["tolerance"]
    el = result["elapsed"]
    tm = result["timing"]
    lines = [
        f"{result['model']}: trained integration {t['solver']} x {t['unfolds']} unfolds vs "
        f"{len(result['candidates'])} integrations on {result['stream']}",
        f"  elapsed median {el['median']:.4g}, max {el['max']:.4g} model time units; errors in float64 "
        f"vs the trained integration; µs/step: {tm['backend']} backend {tm['dtype']}, single step, "
        f"median of {tm['repeats']} x {tm['block']} steps",
        f"  {'solver':26} {'unfolds':>7} {'max|err|':>9} {'rel err':>9} {'µs/step':>8} "
        f"{'speedup':>7} {'stable':>6}  max elapsed",
    ]
    for r in result["candidates"]:
        mark = ("*" if r.pareto else " ") + ("<" if r.chosen else " ")
        bound = "any" if r.max_elapsed is None else f"{r.max_elapsed:.3g}"
        note = "  (trained)" if r.trained else ""
        lines.append(
            f"{mark}{r.solver:26} {r.unfolds:7d} {_num(r.max_abs_err):>9} {_num(r.rel_err):>9} "
            f"{r.us_per_step:8.2f} {r.speedup:6.2f}x {'yes' if r.stable else 'NO':>6}  {bound}{note}"
        )
    lines.append("  * Pareto front (rel err vs µs/step, stable candidates); < chosen")
    c = result["chosen"]
    if c is None:
        lines.append(f"no stable candidate within tolerance {tol:g} (relative error)")
    elif c.trained:
        lines.append(
            f"no candidate within tolerance {tol:g} (relative error) is cheaper than the trained "
            f"integration ({c.solver}, {c.unfolds} unfolds)"
        )
    else:
        lines.append(
            f"cheapest within tolerance {tol:g}: {c.solver}, {c.unfolds} unfolds: {c.speedup:.2f}x the "
            f"trained integration's speed, relative error {c.rel_err:.3g}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """PNG: relative error vs µs per step (log-log), per solver; front, tolerance, choice."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeliquidError("--plot needs matplotlib: pip install 'edgeliquid[plot]'") from None
    rows = [r for r in result["candidates"] if r.rel_err is not None and math.isfinite(r.us_per_step)]
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    floor = min([r.rel_err for r in rows if r.rel_err > 0] + [result["tolerance"] or 1e-3]) / 10
    for solver in SOLVER_NAMES:
        mine = [r for r in rows if r.solver == solver]
        if not mine:
            continue
        ax.scatter(
            [r.us_per_step for r in mine],
            [max(r.rel_err, floor) for r in mine],
            label=solver,
            marker="o" if any(r.stable for r in mine) else "x",
            s=18,
        )
        for r in mine:
            ax.annotate(str(r.unfolds), (r.us_per_step, max(r.rel_err, floor)), fontsize=7)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.us_per_step)
    ys = [max(r.rel_err, floor) for r in front]
    ax.plot([r.us_per_step for r in front], ys, "k--", lw=0.8, label="Pareto")
    if result["tolerance"] > 0:
        ax.axhline(result["tolerance"], color="grey", lw=0.8, ls=":", label="tolerance")
    trained = next(r for r in result["candidates"] if r.trained)
    ax.axvline(trained.us_per_step, color="grey", lw=0.8, label="trained integration")
    c = result["chosen"]
    if c is not None:
        y = max(c.rel_err, floor)
        ax.scatter([c.us_per_step], [y], s=120, facecolors="none", edgecolors="r", label="chosen")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("µs per step (cpu, float32)")
    ax.set_ylabel(f"relative output error vs trained (0 drawn at {floor:.0e})")
    ax.set_title(f"edgeliquid tune: {os.path.basename(str(result['model']))}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
