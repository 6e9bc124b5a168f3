"""``edgeliquid fleet replay``: a candidate model through many flight recordings, compared.

Each recording's inputs, elapsed times and state resets go through the candidate (and the
``baseline``, if given, on the same inputs); its outputs are compared with the recorded ones
(or the baseline's). Per recording and fleet-wide, per output channel: max / mean / p99 of
|difference|, the fraction of steps over ``threshold`` and the first step over it, and the
mode changes that would differ (the node fails safe on a non-finite output). Recordings are
read by the tasks themselves (:mod:`.recordings`); one that cannot be read is reported and
skipped. Results depend only on the recordings and the models, never on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeliquidError, InputError, RecordingError
from ..node.recorder import read_step_arrays, truncation_note
from .diffstats import MODE_SAFE, diff_pass, percentile  # noqa: F401 (MODE_SAFE: API)
from .engine import Engine, TaskFailure
from .policies import lend
from .progress import Progress
from .recordings import expand, group_by_size

# Fleet-wide p99 from merged histograms: 50 log bins per decade from 1e-12 to 1e4 (the
# reported value is the upper edge of its bin: at most 4.7 % high). Per recording: exact.
HIST_EDGES = np.logspace(-12, 4, 16 * 50 + 1)


@dataclass(frozen=True)
class ReplayJob:
    """What every task needs besides its recordings (models travel as bytes: a few kB)."""

    model: bytes
    model_name: str
    baseline: bytes | None = None
    baseline_name: str | None = None
    threshold: float = 0.05


MAX_BATCH = 256  # segments a batch-kernel call steps together


def policy_outputs(pol, x: np.ndarray, elapsed: np.ndarray, reset: np.ndarray) -> np.ndarray:
    """[T, M] outputs of ``pol`` over a recording from a zero state, resetting where recorded.

    Segments between resets run in one compiled loop; a step that fails (a non-finite state:
    the node would fail safe) gives NaN outputs and leaves the state as it was.
    """
    t = len(x)
    out = np.empty((t, pol.n_outputs), np.float64)
    cuts = [0, *[int(k) for k in np.flatnonzero(reset) if k > 0], t]
    for a, b in zip(cuts[:-1], cuts[1:]):
        pol.reset()
        try:
            out[a:b] = pol.run(x[a:b], elapsed[a:b])
        except InputError:
            pol.reset()
            for k in range(a, b):
                try:
                    out[k] = pol.step(x[k], float(elapsed[k]))
                except InputError:
                    out[k] = np.nan
    return out


def compare(got: np.ndarray, ref: np.ndarray, mode: np.ndarray, log_ns: np.ndarray, threshold: float) -> dict:
    """Per-channel statistics of |got - ref| (see module docstring), plus merge sums.

    One compiled pass (:func:`.diffstats.diff_pass`); the exact p99 from a partial sort.
    """
    got = np.ascontiguousarray(got, np.float64)
    ref = np.ascontiguousarray(ref, np.float64)
    n, m = got.shape
    diffs = np.empty((m, n))
    fl = np.empty((m, 2))
    it = np.empty((m, 4), np.int64)
    hist = np.empty((m, len(HIST_EDGES) + 1), np.int64)
    first_over, first, n_mode, first_mode = diff_pass(
        got, ref, np.ascontiguousarray(mode, np.int64), float(threshold), HIST_EDGES, diffs, fl, it, hist
    )
    channels = []
    for c in range(m):
        k, over = int(it[c, 0]), int(it[c, 1])
        channels.append(
            {
                "max_abs_diff": float(fl[c, 0]) if k else 0.0,
                "mean_abs_diff": float(fl[c, 1] / k) if k else 0.0,
                "p99_abs_diff": percentile(diffs[c, :k], 99) if k else 0.0,
                "frac_over": over / n if n else 0.0,
                "first_step_over": int(it[c, 2]) if it[c, 2] >= 0 else None,
                "nonfinite_mismatch": int(it[c, 3]),
                "_sum": float(fl[c, 1]),
                "_n": k,
                "_over": over,
            }
        )
    first = int(first) if first >= 0 else None
    return {
        "steps": n,
        "channels": channels,
        "first_step_over": int(first_over) if first_over >= 0 else None,
        "first_divergence_step": first,
        "first_divergence_s": (float((log_ns[first] - log_ns[0]) / 1e9) if first is not None else None),
        "mode_changes_differ": int(n_mode),
        "first_mode_difference_step": int(first_mode) if first_mode >= 0 else None,
        "_hist": hist,
    }


def _read(job: ReplayJob, path: str) -> dict[str, Any]:
    """A recording's arrays, checked against the candidate's shape; raises for an unreadable one."""
    rec = read_step_arrays(path)
    x = rec["x"]
    if len(x) == 0:
        raise RecordingError(f"{path}: no steps recorded")
    rec["dtype"] = rec["metadata"].get("dtype", "float32")
    with lend(job.model, job.model_name, rec["dtype"]) as pol:
        dims = pol.n_inputs, pol.n_outputs
    if dims != (x.shape[1], rec["y"].shape[1]):
        raise RecordingError(
            f"{path}: holds {x.shape[1]} inputs / {rec['y'].shape[1]} outputs per step but "
            f"{job.model_name} has {dims[0]} / {dims[1]}"
        )
    return rec


def _segments(reset: np.ndarray, t: int) -> list[tuple[int, int]]:
    cuts = [0, *[int(k) for k in np.flatnonzero(reset) if k > 0], t]
    return list(zip(cuts[:-1], cuts[1:]))


def batch_outputs(blob: bytes, name: str, dtype: str, recs: list[dict[str, Any]]) -> list[np.ndarray]:
    """:func:`policy_outputs` of every recording in ``recs``, bit for bit, with the segments
    between resets (each starts from a zero state) as the rows of the policy's batch kernel.

    Segments of similar length share a batch (padding with zeros and elapsed 1.0 after a
    short one's end costs at most a quarter of the batch); a batch with a failing step falls
    back to :func:`policy_outputs`, segment by segment, as do policies whose batch kernel is
    not the single-instance one row by row (CfC).
    """
    from ..runtime.policy import CpuPolicy

    with lend(blob, name, dtype) as single:
        return _batch_outputs(single, blob, name, dtype, recs, MAX_BATCH if type(single) is CpuPolicy else 1)


def _batch_outputs(single, blob: bytes, name: str, dtype: str, recs: list, limit: int) -> list[np.ndarray]:
    # the LTC batch kernel steps each row with the single-instance kernel (bit for bit);
    # others (CfC's SIMD chunks) round differently: those run recording by recording (limit 1)
    outs = [np.empty((len(r["x"]), single.n_outputs)) for r in recs]
    segs = [(i, a, b) for i, r in enumerate(recs) for a, b in _segments(r["reset"], len(r["x"]))]
    segs.sort(key=lambda s: -(s[2] - s[1]))  # stable: ties in recording order
    batches: list[list[tuple[int, int, int]]] = []
    for s in segs:
        cur = batches[-1] if batches else None
        if cur and len(cur) < limit and 4 * (s[2] - s[1]) >= 3 * (cur[0][2] - cur[0][1]):
            cur.append(s)
        else:
            batches.append([s])
    for batch in batches:
        if len(batch) > 1:
            t = batch[0][2] - batch[0][1]
            xs = np.zeros((t, len(batch), single.n_inputs))
            el = np.ones((t, len(batch)))
            for j, (i, a, b) in enumerate(batch):
                xs[: b - a, j] = recs[i]["x"][a:b]
                el[: b - a, j] = recs[i]["elapsed"][a:b]
            with lend(blob, name, dtype, len(batch)) as pol:
                pol.reset()
                try:
                    ys = pol.run(xs, el)
                except InputError:
                    ys = None
            if ys is not None:
                for j, (i, a, b) in enumerate(batch):
                    outs[i][a:b] = ys[: b - a, j]
                continue
        for i, a, b in batch:
            r = recs[i]
            outs[i][a:b] = policy_outputs(single, r["x"][a:b], r["elapsed"][a:b], np.zeros(b - a, bool))
    return outs


def replay_one(job: ReplayJob, path: str) -> dict[str, Any]:
    """One recording through the candidate (and baseline); raises for an unreadable one."""
    r = replay_task((job, [path]))[0]
    if "error" in r:
        raise RecordingError(r["error"])
    return r


def _result(job: ReplayJob, path: str, rec: dict[str, Any], got: np.ndarray, ref: np.ndarray) -> dict:
    r = compare(got, ref, rec["mode"], rec["log_ns"], job.threshold)
    r = {"recording": path, "encoding": rec["encoding"], "truncated": bool(rec["truncated"]), **r}
    note = truncation_note(path, {**rec, "steps": rec["x"], "events": []}) if rec["truncated"] else None
    r["note"] = note
    return r


def _error(path: str, exc: BaseException) -> dict[str, str]:
    return {"recording": path, "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}


def replay_task(task: tuple[ReplayJob, list[str]]) -> list[dict[str, Any]]:
    """A task: a few recordings; an unreadable one becomes ``{"recording", "error"}``.

    Every recording is read first (:func:`read_task`), then the task's recordings of one dtype
    go through the candidate (and the baseline) together (:func:`batch_outputs`), then each is
    compared (:func:`compare_task`).
    """
    return compare_task(read_task(task))


def read_task(task: tuple[ReplayJob, list[str]]) -> tuple:
    """A task's first stage: its recordings read and checked (Python and file I/O)."""
    job, paths = task
    recs: dict[int, dict[str, Any]] = {}
    out: list[dict[str, Any] | None] = [None] * len(paths)
    for k, p in enumerate(paths):
        try:
            recs[k] = _read(job, p)
        except (EdgeliquidError, OSError, ValueError) as exc:
            out[k] = _error(p, exc)
    return job, paths, recs, out


def compare_task(read: tuple) -> list[dict[str, Any]]:
    """A task's second stage: the read recordings through the policies (compiled kernels,
    the GIL released), then compared."""
    job, paths, recs, out = read
    for dtype in sorted({r["dtype"] for r in recs.values()}):
        ks = [k for k in recs if recs[k]["dtype"] == dtype]
        group = [recs[k] for k in ks]
        try:
            got = batch_outputs(job.model, job.model_name, dtype, group)
            if job.baseline is not None:
                ref = batch_outputs(job.baseline, job.baseline_name or "baseline", dtype, group)
            else:
                ref = [r["y"] for r in group]
        except (EdgeliquidError, ValueError) as exc:  # e.g. a baseline of another shape
            for k in ks:
                out[k] = _error(paths[k], exc)
            continue
        for k, g, f in zip(ks, got, ref):
            try:
                out[k] = _result(job, paths[k], recs[k], g, f)
            except (EdgeliquidError, ValueError) as exc:
                out[k] = _error(paths[k], exc)
    return out  # type: ignore[return-value]


def _p99(hist: np.ndarray) -> float:
    n = hist.sum()
    if not n:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), 0.99 * n))
    return 0.0 if k == 0 else float(HIST_EDGES[min(k, len(HIST_EDGES) - 1)])


def summarize(results: list[dict[str, Any]], threshold: float, worst: int) -> dict[str, Any]:
    """Fleet-wide per-channel figures and the ``worst`` recordings (merged in a fixed order)."""
    ok = [r for r in results if "error" not in r]
    n_ch = max((len(r["channels"]) for r in ok), default=0)
    fleet = []
    for c in range(n_ch):
        rows = [r["channels"][c] for r in ok if len(r["channels"]) > c]
        n = sum(x["_n"] for x in rows)
        steps = sum(r["steps"] for r in ok if len(r["channels"]) > c)
        hist = sum(
            (r["_hist"][c] for r in ok if len(r["channels"]) > c), np.zeros(len(HIST_EDGES) + 1, np.int64)
        )
        fleet.append(
            {
                "max_abs_diff": max((x["max_abs_diff"] for x in rows), default=0.0),
                "mean_abs_diff": sum(x["_sum"] for x in rows) / n if n else 0.0,
                "p99_abs_diff": _p99(hist),
                "frac_over": sum(x["_over"] for x in rows) / steps if steps else 0.0,
                "recordings_over": sum(1 for x in rows if x["first_step_over"] is not None),
            }
        )

    def badness(r):
        return (-max(ch["max_abs_diff"] for ch in r["channels"]), -r["mode_changes_differ"], r["recording"])

    ranked = sorted(ok, key=badness)[:worst]
    return {
        "recordings": len(ok),
        "unreadable": len(results) - len(ok),
        "steps": sum(r["steps"] for r in ok),
        "threshold": threshold,
        "channels": fleet,
        "mode_changes_differ": sum(r["mode_changes_differ"] for r in ok),
        "recordings_with_mode_differences": sum(1 for r in ok if r["mode_changes_differ"]),
        "worst": [
            {
                "recording": r["recording"],
                "max_abs_diff": max(ch["max_abs_diff"] for ch in r["channels"]),
                "first_divergence_step": r["first_divergence_step"],
                "first_divergence_s": r["first_divergence_s"],
                "mode_changes_differ": r["mode_changes_differ"],
            }
            for r in ranked
        ],
    }


def _public(r: dict[str, Any]) -> dict[str, Any]:
    """A per-recording result without the merge fields (``_``-prefixed)."""
    if "error" in r:
        return r
    out = {k: v for k, v in r.items() if not k.startswith("_")}
    out["channels"] = [{k: v for k, v in ch.items() if not k.startswith("_")} for ch in r["channels"]]
    return out


def fleet_replay(
    specs: list[str],
    model: str,
    baseline: str | None = None,
    threshold: float = 0.05,
    worst: int = 10,
    engine: Engine | None = None,
    progress: bool = True,
    max_task_bytes: int = 64 << 20,
) -> dict[str, Any]:
    """Replay every recording ``specs`` names through ``model``; the report (see module docstring)."""

    def blob(p: str, what: str) -> bytes:
        try:
            return Path(p).read_bytes()
        except OSError as exc:
            raise RecordingError(f"{what} {p}: cannot read: {exc.strerror or exc}") from None

    job = ReplayJob(
        blob(model, "--model"),
        str(model),
        blob(baseline, "--baseline") if baseline else None,
        str(baseline) if baseline else None,
        float(threshold),
    )
    from ..model.file import read_bytes

    read_bytes(job.model, str(model))  # a bad model file: one error now, not one per recording
    if job.baseline is not None:
        read_bytes(job.baseline, str(baseline))
    paths, missing = expand(specs)
    groups = group_by_size(paths, max_task_bytes)
    engine = engine or Engine()
    sizes = [sum(_size(p) for p in g) for g in groups]
    bar = Progress("fleet replay", len(groups), "steps", total_weight=sum(sizes) or None, enabled=progress)

    def done(i: int, r: Any) -> None:
        steps = 0 if isinstance(r, TaskFailure) else sum(x.get("steps", 0) for x in r)
        bar.update(steps, sizes[i], failed=isinstance(r, TaskFailure))

    # reading task i+1 (Python) overlaps task i's kernels in-process: ~1.2x here
    out = engine.map(compare_task, [(job, g) for g in groups], done, prepare=read_task)
    results: list[dict[str, Any]] = list(missing)
    for g, r in zip(groups, out):
        if isinstance(r, TaskFailure):
            results += [{"recording": p, "error": f"task failed twice: {r.error}"} for p in g]
        else:
            results += r
    summary = summarize(results, threshold, worst)
    return {
        "model": str(model),
        "baseline": str(baseline) if baseline else None,
        "compared_with": "baseline" if baseline else "recorded outputs",
        "engine": engine.description,
        "tasks": len(groups),
        "fleet": summary,
        "per_recording": [_public(r) for r in results],
        "unreadable": [r for r in results if "error" in r],
    }


def _size(p: str) -> int:
    try:
        return Path(p).stat().st_size
    except OSError:
        return 0


def format_report(r: dict[str, Any]) -> str:
    f = r["fleet"]
    lines = [
        f"fleet replay of {f['recordings']} recordings ({f['steps']:,} steps) through {r['model']}, "
        f"compared with the {r['compared_with']} ({r['engine']}, {r['tasks']} tasks)",
        f"  threshold {f['threshold']:g}; mode changes that would differ: {f['mode_changes_differ']} "
        f"in {f['recordings_with_mode_differences']} recordings",
    ]
    for c, ch in enumerate(f["channels"]):
        lines.append(
            f"  channel {c}: max |diff| {ch['max_abs_diff']:.3g}, mean {ch['mean_abs_diff']:.3g}, "
            f"p99 {ch['p99_abs_diff']:.3g}, over threshold {100 * ch['frac_over']:.2f} % of steps "
            f"({ch['recordings_over']} recordings)"
        )
    if f["worst"]:
        lines.append(f"  worst {len(f['worst'])}:")
        for w in f["worst"]:
            at = (
                "never"
                if w["first_divergence_s"] is None
                else (f"step {w['first_divergence_step']} ({w['first_divergence_s']:.3f} s)")
            )
            lines.append(
                f"    {w['recording']}: max |diff| {w['max_abs_diff']:.3g}, first divergence {at}, "
                f"mode differences {w['mode_changes_differ']}"
            )
    for u in r["unreadable"]:
        lines.append(f"  skipped {u['recording']}: {u['error']}")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: str) -> None:
    """Fleet-wide |diff| distribution per channel, and the worst recordings' max |diff|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = r["fleet"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [x for x in r["per_recording"] if "error" not in x]
    for c in range(len(f["channels"])):
        mx = np.array([x["channels"][c]["max_abs_diff"] for x in rows])
        mx = np.sort(mx[mx > 0])
        if mx.size:
            a.step(mx, 1 - np.arange(mx.size) / len(rows), where="post", label=f"channel {c}")
    a.axvline(f["threshold"], color="k", ls="--", lw=1, label="threshold")
    a.set(
        xscale="log",
        xlabel="max |diff| in a recording",
        ylabel="fraction of recordings ≥ x",
        title="how far the candidate departs, recording by recording",
    )
    a.legend()
    w = f["worst"]
    b.barh([Path(x["recording"]).name for x in w][::-1], [x["max_abs_diff"] for x in w][::-1])
    b.axvline(f["threshold"], color="k", ls="--", lw=1)
    b.set(xlabel="max |diff|", title=f"worst {len(w)} recordings")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
