"""The sweep's conditions from YAML: a grid (every combination) or random samples, validated.

::

    seed: 0                       # the rollouts' random streams (default 0)
    config: path/to/robot.yaml    # channel maps and model_dt (default: the demo's config)
    grid:                         # every combination of these values
      noise: [0, 0.01, 0.05]
      delay_steps: [0, 1, 2]
    random:                       # and/or: `samples` draws, each axis uniform in [lo, hi]
      samples: 50
      axes: {pole_mass: [0.05, 0.3]}
    fixed: {rate_hz: 100}         # one value for every condition

Axes (defaults: the demo's): see :data:`AXES`. Errors are one line naming the file and key.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

# name: (default, low, high, integer?, what)
AXES: dict[str, tuple[float, float, float, bool, str]] = {
    "noise": (0.002, 0.0, 10.0, False, "sensor noise sigma (sensor units)"),
    "delay_steps": (0, 0, 100, True, "control periods between sensing and actuation"),
    "jitter": (0.2, 0.0, 0.9, False, "sample-time jitter, fraction of a period (uniform +-)"),
    "rate_hz": (100.0, 1.0, 10_000.0, False, "control rate, Hz"),
    "pole_half_length": (0.5, 0.01, 10.0, False, "pole half length, m"),
    "pole_mass": (0.1, 0.001, 100.0, False, "pole mass, kg"),
    "cart_mass": (1.0, 0.01, 1000.0, False, "cart mass, kg"),
    "friction": (0.0, 0.0, 100.0, False, "viscous cart friction, N s/m"),
    "init_scale": (0.05, 0.0, 1.0, False, "initial x, x_dot, theta_dot uniform in +-this"),
    "init_angle": (0.05, 0.0, 1.0, False, "initial theta uniform in +-this, rad"),
    "saturation": (10.0, 0.01, 1000.0, False, "actuator force limit, N"),
}
MAX_CONDITIONS = 10_000
MAX_VALUES = 1000
MAX_BYTES = 1 << 20


def _axis_value(v: Any, name: str, where: str) -> float:
    default, lo, hi, integer, what = AXES[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ConfigError(f"{where}: expected a number ({what}), got {v!r}")
    if integer and v != int(v):
        raise ConfigError(f"{where}: expected an integer ({what}), got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{where}: {v!r} is outside [{lo:g}, {hi:g}] ({what})")
    return int(v) if integer else float(v)


def _axis_name(name: Any, where: str) -> str:
    if name not in AXES:
        raise ConfigError(f"{where}: unknown axis {name!r}; expected one of {', '.join(AXES)}")
    return name


def load_grid(path: str | os.PathLike) -> dict[str, Any]:
    """The conditions: ``{"axes": [names that vary], "conditions": [{axis: value} ...], "seed",
    "config"}``; every condition has every axis."""
    import yaml

    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--grid {p}: cannot read: {exc.strerror or exc}") from None
    if len(text) > MAX_BYTES:
        raise ConfigError(f"--grid {p}: {len(text)} bytes, more than the {MAX_BYTES} a grid may have")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--grid {p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--grid {p}: expected a mapping with grid/random/fixed keys")
    unknown = set(data) - {"seed", "config", "grid", "random", "fixed"}
    if unknown:
        raise ConfigError(
            f"--grid {p}: unknown key {sorted(unknown)[0]!r}; expected seed, config, grid, random, fixed"
        )
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"{p}: seed: expected a non-negative integer, got {seed!r}")
    base = {k: v[0] for k, v in AXES.items()}
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{p}: fixed: expected a mapping of axis: value")
    for k, v in fixed.items():
        base[_axis_name(k, f"{p}: fixed")] = _axis_value(v, k, f"{p}: fixed.{k}")
    conds: list[dict[str, float]] = []
    varying: list[str] = []
    grid = data.get("grid")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{p}: grid: expected a mapping of axis: [values]")
        names, values = [], []
        for k, vs in grid.items():
            _axis_name(k, f"{p}: grid")
            if not isinstance(vs, list) or not vs or len(vs) > MAX_VALUES:
                raise ConfigError(f"{p}: grid.{k}: expected a list of 1 to {MAX_VALUES} values")
            names.append(k)
            values.append([_axis_value(v, k, f"{p}: grid.{k}[{i}]") for i, v in enumerate(vs)])
        n = int(np.prod([len(v) for v in values]))
        if n > MAX_CONDITIONS:
            raise ConfigError(f"{p}: grid: {n} combinations, more than {MAX_CONDITIONS}")
        varying += names
        conds += [{**base, **dict(zip(names, combo))} for combo in itertools.product(*values)]
    rnd = data.get("random")
    if rnd is not None:
        if not isinstance(rnd, dict) or set(rnd) - {"samples", "axes"} or "axes" not in rnd:
            raise ConfigError(f"{p}: random: expected {{samples: N, axes: {{axis: [lo, hi]}}}}")
        n = rnd.get("samples", 100)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CONDITIONS:
            raise ConfigError(f"{p}: random.samples: expected an integer in [1, {MAX_CONDITIONS}], got {n!r}")
        axes = rnd["axes"]
        if not isinstance(axes, dict) or not axes:
            raise ConfigError(f"{p}: random.axes: expected a mapping of axis: [lo, hi]")
        rng = np.random.default_rng([seed, 7])
        draws = {}
        for k, r in axes.items():
            _axis_name(k, f"{p}: random.axes")
            if not isinstance(r, list) or len(r) != 2:
                raise ConfigError(f"{p}: random.axes.{k}: expected [lo, hi]")
            lo, hi = (_axis_value(v, k, f"{p}: random.axes.{k}") for v in r)
            if lo > hi:
                raise ConfigError(f"{p}: random.axes.{k}: lo {lo} > hi {hi}")
            x = rng.uniform(lo, hi, n)
            draws[k] = np.round(x).astype(int).tolist() if AXES[k][3] else x.tolist()
        varying += [k for k in axes if k not in varying]
        conds += [{**base, **{k: draws[k][i] for k in draws}} for i in range(n)]
    if not conds:
        conds = [base]
    if len(conds) > MAX_CONDITIONS:
        raise ConfigError(f"{p}: {len(conds)} conditions, more than {MAX_CONDITIONS}")
    config = data.get("config")
    if config is not None:
        if not isinstance(config, str):
            raise ConfigError(f"{p}: config: expected a path to a node config")
        config = str((p.parent / config) if not Path(config).is_absolute() else Path(config))
    return {"axes": varying, "conditions": conds, "seed": seed, "config": config, "path": str(p)}
