"""``edgeliquid fleet sweep``: closed-loop rollouts of a simulated plant over a grid of conditions.

Each task steps up to :data:`ROWS_PER_TASK` cart-poles in lockstep (:mod:`.plant`), each row one
rollout of one condition, driven by the policy's batch kernel with each row's own elapsed
time; per control period, per row: the sample-time jitter, the plant under the command
chosen ``delay_steps`` periods earlier (zero-order hold), the failure check, sensor noise,
then the node's event-mode control step (input map, policy, output map, rate limit: the
config's channels; no fail-safe). A rollout succeeds when it stays "balanced" as the demo
means it (|theta| < 0.2 rad and |x| < 2.4 m throughout). Per condition: success rate, median
time to failure (of the rollouts that failed), mean |theta| while balanced.
Every row's random numbers depend only on (seed, condition, rollout), so results do not
depend on how rows are packed into tasks, or on the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from ..errors import ConfigError
from ..hil.demo import BALANCED_RAD, BALANCED_X_M, default_config_path
from . import lockstep as ls
from . import plant as pl
from .engine import Engine, TaskFailure
from .grid import load_grid
from .policies import lend
from .progress import Progress

ROWS_PER_TASK = 4096
MAX_PLANT_STEPS = 2 * 10**10  # per job: conditions x rollouts x steps x models


@dataclass(frozen=True)
class SweepTask:
    """One task's rows (all at one control rate) and what they need."""

    model: bytes
    model_name: str
    model_index: int
    chan: np.ndarray  # node.channels.ChannelMaps.chan of the config
    n_in: int
    n_out: int
    model_dt: float
    rate_hz: float
    steps: int
    seed: int
    cond: np.ndarray  # [R] condition index
    rollout: np.ndarray  # [R] rollout index within the condition
    params: np.ndarray  # [R, plant.N_PARAMS]
    noise: np.ndarray  # [R]
    jitter: np.ndarray  # [R]
    delay: np.ndarray  # [R] int64
    init_scale: np.ndarray  # [R]
    init_angle: np.ndarray  # [R]


@njit(cache=True)
def _init(states, keys, init_scale, init_angle):
    for b in range(states.shape[0]):
        for j in range(4):
            r = init_angle[b] if j == 2 else init_scale[b]
            states[b, j] = r * (2.0 * pl.uniform(keys[b], j) - 1.0)


def counters_per_step(n_in: int) -> int:
    """Random numbers a row draws per control period: the jitter, then normals in pairs."""
    return 1 + 2 * ((n_in + 1) // 2)


def rollout_rows(t: SweepTask) -> dict[str, np.ndarray]:
    """Run a task's rows in lockstep; per row: success, failure time (nan), sum and count of |theta|.

    A plain LTC policy runs the whole rollout in one compiled call (:func:`.lockstep.rollout_ltc`);
    others (CfC, mixed memory) a period at a time: :func:`.lockstep.act_sense`, then the policy's
    batch step. Same results either way.
    """
    from ..runtime.packing import MIXED
    from ..runtime.policy import CpuPolicy

    r = len(t.cond)
    keys = pl.row_keys(t.seed, t.cond, t.rollout)
    states = np.zeros((r, 4))
    _init(states, keys, t.init_scale, t.init_angle)
    ring = np.zeros((r, int(t.delay.max()) + 2))
    alive = np.ones(r, np.bool_)
    t_s, fail_s = np.zeros(r), np.full(r, np.nan)
    sum_abs, n_alive = np.zeros(r), np.zeros(r, np.int64)
    xs = np.zeros((r, t.n_in), np.float32)
    elapsed, dt, last = np.zeros(r), np.zeros(r), np.zeros(r)
    rows = (
        last, states, ring, t.delay, t.params, t.noise, t.jitter, 1.0 / t.rate_hz, keys, alive, t_s, fail_s,
        sum_abs, n_alive, t.chan, t.n_in, t.model_dt, xs, elapsed, dt, BALANCED_RAD, BALANCED_X_M,
    )  # fmt: skip
    with lend(t.model, t.model_name, np.float32, r) as pol:
        pol.reset()
        if type(pol) is CpuPolicy and not pol._ip[MIXED]:
            _rollout_ltc(pol, t.steps, rows)
        else:
            ys = np.zeros((r, t.n_out), np.float32)
            for k in range(t.steps):
                ls.act_sense(k, ys, *rows)
                ys = pol.step(xs, elapsed)
    return {"success": alive.copy(), "fail_s": fail_s, "sum_abs": sum_abs, "n_alive": n_alive}


def _rollout_ltc(pol, steps: int, rows: tuple) -> None:
    import numba

    from ..runtime.kernels import CHUNK, STATUS_BAD_ELAPSED, STATUS_BAD_INPUT

    r = rows[1].shape[0]
    fails = np.full(((r + CHUNK - 1) // CHUNK, 3), -1, np.int64)
    # chunks handed out one at a time: a thread the OS delays holds up one chunk, not a share
    with numba.parallel_chunksize(1):
        ls.rollout_ltc(steps, *rows, pol._fp, pol._ip, pol._work2d, pol._bad, pol._scratch, fails)
    hit = [tuple(int(v) for v in f) for f in fails if f[0] >= 0]
    if hit:
        # what the period-by-period loop raises: the first bad period; in it, a bad input
        # (checked for every row before stepping) before a bad output, then the first row
        k, b, st = min(hit, key=lambda f: (f[0], f[2] not in (STATUS_BAD_INPUT, STATUS_BAD_ELAPSED), f[1]))
        xs, elapsed = rows[17], rows[18]  # a failed chunk stopped: its rows hold that period's
        raise pol._status_error(st, xs[b], elapsed[b], f" (batch row {b})")


def sweep_task(t: SweepTask) -> dict[str, Any]:
    """A task's per-row results, with the rows' identities (merged by the driver)."""
    out = rollout_rows(t)
    return {"model": t.model_index, "cond": t.cond, "plant_steps": len(t.cond) * t.steps, **out}


def _channel_maps(config: str | None, n_in: int, n_out: int):
    from ..node.channels import ChannelMaps
    from ..node.config import load_config

    cfg = load_config(config or default_config_path())
    if len(cfg.inputs) != 4:
        raise ConfigError(
            f"{config}: the cart-pole has 4 sensors but the config maps {len(cfg.inputs)} inputs"
        )
    if (len(cfg.inputs), len(cfg.outputs)) != (n_in, n_out) and n_in != len(cfg.inputs):
        raise ConfigError(f"{config}: maps {len(cfg.inputs)} inputs but the model takes {n_in}")
    return ChannelMaps(cfg.inputs, cfg.outputs).chan.copy(), cfg.model_dt


def make_tasks(models: list[tuple[str, bytes]], grid: dict, rollouts: int, seconds: float) -> list[SweepTask]:
    """Rows (condition x rollout) packed into tasks of one rate and at most ROWS_PER_TASK rows."""
    from ..model.file import read_bytes

    conds = grid["conditions"]
    tasks = []
    for mi, (name, blob) in enumerate(models):
        cfg = read_bytes(blob, name).config
        chan, model_dt = _channel_maps(grid["config"], cfg.n_inputs, cfg.n_outputs)
        rates = sorted({c["rate_hz"] for c in conds})
        for rate in rates:
            idx = [i for i, c in enumerate(conds) if c["rate_hz"] == rate]
            cond = np.repeat(np.array(idx, np.int64), rollouts)
            roll = np.tile(np.arange(rollouts, dtype=np.int64), len(idx))
            for a in range(0, len(cond), ROWS_PER_TASK):
                c, ro = cond[a : a + ROWS_PER_TASK], roll[a : a + ROWS_PER_TASK]

                def col(k, c=c):
                    return np.array([conds[i][k] for i in c], np.float64)

                params = np.stack(
                    [
                        col("cart_mass"),
                        col("pole_mass"),
                        col("pole_half_length"),
                        col("saturation"),
                        col("friction"),
                    ],
                    axis=1,
                )
                tasks.append(
                    SweepTask(
                        blob,
                        name,
                        mi,
                        chan,
                        cfg.n_inputs,
                        cfg.n_outputs,
                        model_dt,
                        float(rate),
                        max(1, math.ceil(seconds * rate)),
                        grid["seed"],
                        c,
                        ro,
                        params,
                        col("noise"),
                        col("jitter"),
                        col("delay_steps").astype(np.int64),
                        col("init_scale"),
                        col("init_angle"),
                    )
                )
    return tasks


def fleet_sweep(
    models: list[str],
    grid_path: str,
    plant: str = "cartpole",
    rollouts: int = 256,
    seconds: float = 10.0,
    engine: Engine | None = None,
    progress: bool = True,
    differ: int = 10,
) -> dict[str, Any]:
    """The robustness table per model and condition (see module docstring)."""
    if plant != "cartpole":
        raise ConfigError(f"--plant {plant}: only 'cartpole' is simulated")
    if not 1 <= len(models) <= 2:
        raise ConfigError(f"--model: one or two models, got {len(models)}")
    blobs = []
    for m in models:
        try:
            blobs.append((str(m), Path(m).read_bytes()))
        except OSError as exc:
            raise ConfigError(f"--model {m}: cannot read: {exc.strerror or exc}") from None
    grid = load_grid(grid_path)
    conds = grid["conditions"]
    total = sum(math.ceil(seconds * c["rate_hz"]) for c in conds) * rollouts * len(models)
    if total > MAX_PLANT_STEPS:
        raise ConfigError(
            f"--grid {grid_path}: {total:.3g} plant steps (conditions x rollouts x steps x models), "
            f"more than {MAX_PLANT_STEPS:.0e}; fewer rollouts, seconds or conditions"
        )
    tasks = make_tasks(blobs, grid, rollouts, seconds)
    engine = engine or Engine()
    bar = Progress("fleet sweep", len(tasks), "plant-steps", enabled=progress)
    import time

    t0 = time.perf_counter()
    out = engine.map(
        sweep_task,
        tasks,
        lambda i, r: bar.update(
            0 if isinstance(r, TaskFailure) else r["plant_steps"], failed=isinstance(r, TaskFailure)
        ),
    )
    wall = time.perf_counter() - t0
    failures = [{"task": r.index, "error": r.error} for r in out if isinstance(r, TaskFailure)]
    tables = []
    for mi in range(len(models)):
        rows = [(t, r) for t, r in zip(tasks, out) if t.model_index == mi and not isinstance(r, TaskFailure)]
        tables.append(_table(conds, rows))
    r = {
        "plant": plant,
        "grid": grid["path"],
        "axes": grid["axes"],
        "rollouts": rollouts,
        "seconds": seconds,
        "models": [str(m) for m in models],
        "engine": engine.description,
        "tasks": len(tasks),
        "plant_steps": int(sum(x["plant_steps"] for x in out if not isinstance(x, TaskFailure))),
        "wall_s": wall,
        "failed_tasks": failures,
        "conditions": [
            {"condition": c, **{f"model{mi}": tables[mi][i] for mi in range(len(models))}}
            for i, c in enumerate(conds)
        ],
    }
    if len(models) == 2:
        r["most_different"] = _most_different(r["conditions"], differ)
    return r


def _table(conds: list[dict], rows: list) -> list[dict[str, Any]]:
    n = len(conds)
    cnt, succ = np.zeros(n, np.int64), np.zeros(n, np.int64)
    sabs, nal = np.zeros(n), np.zeros(n, np.int64)
    fails: list[list[float]] = [[] for _ in range(n)]
    for _, r in rows:  # task order: the same merge everywhere
        c = r["cond"]
        np.add.at(cnt, c, 1)
        np.add.at(succ, c, r["success"].astype(np.int64))
        np.add.at(sabs, c, r["sum_abs"])
        np.add.at(nal, c, r["n_alive"])
        for ci, f in zip(c[~r["success"]], r["fail_s"][~r["success"]]):
            fails[ci].append(float(f))
    return [
        {
            "rollouts": int(cnt[i]),
            "success_rate": float(succ[i] / cnt[i]) if cnt[i] else None,
            "median_time_to_failure_s": float(np.median(fails[i])) if fails[i] else None,
            "mean_abs_angle": float(sabs[i] / nal[i]) if nal[i] else None,
        }
        for i in range(n)
    ]


def _most_different(rows: list[dict], k: int) -> list[dict[str, Any]]:
    def gap(r):
        a, b = r["model0"], r["model1"]
        ds = abs((a["success_rate"] or 0) - (b["success_rate"] or 0))
        da = abs((a["mean_abs_angle"] or 0) - (b["mean_abs_angle"] or 0))
        return ds, da

    ranked = sorted(range(len(rows)), key=lambda i: (-gap(rows[i])[0], -gap(rows[i])[1], i))[:k]
    return [
        {
            "index": i,
            **rows[i],
            "success_rate_difference": rows[i]["model1"]["success_rate"] - rows[i]["model0"]["success_rate"],
        }
        for i in ranked
        if rows[i]["model0"]["success_rate"] is not None and rows[i]["model1"]["success_rate"] is not None
    ]


def format_report(r: dict[str, Any]) -> str:
    axes = r["axes"] or []
    lines = [
        f"fleet sweep: {len(r['conditions'])} conditions x {r['rollouts']} rollouts x {r['seconds']:g} s of "
        f"{r['plant']} ({r['plant_steps']:,} plant-steps in {r['wall_s']:.1f} s, "
        f"{r['plant_steps'] / max(r['wall_s'], 1e-9):,.0f}/s; {r['engine']}, {r['tasks']} tasks)",
    ]
    for mi, m in enumerate(r["models"]):
        lines.append(f"  model{mi}: {m}")
    head = (
        "  "
        + " ".join(f"{a:>16}" for a in axes)
        + "".join(f"  m{mi} success  ttf_s  |theta|" for mi in range(len(r["models"])))
    )
    lines.append(head)
    for row in r["conditions"][:200]:
        cells = " ".join(f"{row['condition'][a]:>16.4g}" for a in axes)
        for mi in range(len(r["models"])):
            t = row[f"model{mi}"]
            ttf = "-" if t["median_time_to_failure_s"] is None else f"{t['median_time_to_failure_s']:.2f}"
            ang = "-" if t["mean_abs_angle"] is None else f"{t['mean_abs_angle']:.4f}"
            sr = "-" if t["success_rate"] is None else f"{100 * t['success_rate']:.1f}%"
            cells += f"  {sr:>11} {ttf:>6} {ang:>8}"
        lines.append("  " + cells)
    if len(r["conditions"]) > 200:
        lines.append(f"  ... {len(r['conditions']) - 200} more in --json")
    if r.get("most_different"):
        lines.append("  conditions where the two models differ most:")
        for d in r["most_different"]:
            c = ", ".join(f"{a}={d['condition'][a]:g}" for a in axes)
            s0, s1 = (100 * d[f"model{i}"]["success_rate"] for i in (0, 1))
            lines.append(f"    {c}: success {s0:.1f}% vs {s1:.1f}%")
    for f in r["failed_tasks"]:
        lines.append(f"  task {f['task']} failed twice: {f['error']}")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: str, axes: list[str] | None = None) -> list[str]:
    """Success-rate heat map over two axes (mean over the others), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = [a for a in r["axes"] if len({c["condition"][a] for c in r["conditions"]}) > 1]
    if axes:
        for a in axes:
            if a not in r["axes"]:
                raise ConfigError(
                    f"--axes {a}: not an axis of the grid ({', '.join(r['axes']) or 'none vary'})"
                )
        ax_x, ax_y = axes
    elif len(varying) >= 2:
        ax_x, ax_y = varying[:2]
    elif varying:
        ax_x, ax_y = varying[0], None
    else:
        raise ConfigError("--plot: the grid varies no axis; nothing to map")
    xs = sorted({c["condition"][ax_x] for c in r["conditions"]})
    ys = sorted({c["condition"][ax_y] for c in r["conditions"]}) if ax_y else [0]
    n = len(r["models"])
    fig, panels = plt.subplots(1, n, figsize=(5.5 * n + 1, 4.5), squeeze=False)
    titles = []
    for mi in range(n):
        grid = np.full((len(ys), len(xs)), np.nan)
        acc: dict[tuple[int, int], list[float]] = {}
        for c in r["conditions"]:
            s = c[f"model{mi}"]["success_rate"]
            if s is None:
                continue
            key = (ys.index(c["condition"][ax_y]) if ax_y else 0, xs.index(c["condition"][ax_x]))
            acc.setdefault(key, []).append(s)
        for (i, j), v in acc.items():
            grid[i, j] = np.mean(v)
        a = panels[0, mi]
        im = a.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        a.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        a.set_yticks(range(len(ys)), [f"{v:g}" for v in ys] if ax_y else [""])
        for (i, j), v in acc.items():
            a.text(j, i, f"{100 * np.mean(v):.0f}", ha="center", va="center", fontsize=8)
        title = f"{Path(r['models'][mi]).name}: success rate"
        a.set(xlabel=ax_x, ylabel=ax_y or "", title=title)
        titles.append(title)
    fig.colorbar(im, ax=panels.ravel().tolist(), label="success rate (balanced whole rollout)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return titles
