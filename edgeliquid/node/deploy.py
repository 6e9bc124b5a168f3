"""Does a model fit a node config? Size, input-normalisation and solver-stability checks (pure,
no I/O)."""

from __future__ import annotations

import json
import logging

import numpy as np

from .config import NodeConfig

log = logging.getLogger("edgeliquid.node.loop")


def normalization_problem(cfg: NodeConfig, metadata: dict[str, str]) -> str | None:
    """Why the config's input scale/offset differ from the model's recorded normalisation
    (None when they agree or the model records none).

    A policy fed differently normalised inputs than it was trained on misbehaves without
    any error; this is the one check that can catch it before the robot moves.
    """
    raw = metadata.get("input_normalization")
    if not raw:
        return None
    try:
        norm = json.loads(raw)
        off, scale = np.asarray(norm["offset"], float), np.asarray(norm["scale"], float)
    except (ValueError, KeyError, TypeError):
        return f"model metadata input_normalization is not valid JSON {{offset, scale}}: {raw[:200]!r}"
    got_off = np.array([c.offset for c in cfg.inputs])
    got_scale = np.array([c.scale for c in cfg.inputs])
    if (
        off.shape != got_off.shape
        or scale.shape != got_scale.shape
        or not (np.allclose(off, got_off) and np.allclose(scale, got_scale))
    ):
        return (
            f"{cfg.source}: inputs offset/scale {got_off.tolist()} / {got_scale.tolist()} differ from "
            f"the model's training normalisation {off.ravel()[:16].tolist()} / {scale.ravel()[:16].tolist()}"
        )
    return None


def check_normalization(cfg: NodeConfig, metadata: dict[str, str]) -> bool:
    """Warn when the config's input scale/offset differ from the model's normalisation."""
    problem = normalization_problem(cfg, metadata)
    if problem:
        log.warning("%s", problem)
    return problem is None


def size_problem(cfg: NodeConfig, n_inputs: int, n_outputs: int) -> str | None:
    """Why a model with these sizes cannot serve this config (None when it can)."""
    n_in, n_out = len(cfg.inputs), len(cfg.outputs)
    if (n_inputs, n_outputs) != (n_in, n_out):
        return (
            f"{cfg.source}: config has {n_in} inputs / {n_out} outputs but model {cfg.model} "
            f"has {n_inputs} / {n_outputs}"
        )
    return None


def stability_kwargs(cfg: NodeConfig) -> dict:
    """Keywords of every model load the node makes (start-up, SIGHUP, ``run --check``):
    ``load()`` refuses a model whose explicit solver is unstable at the node's nominal elapsed
    time; with ``allow_unstable: true`` the node loads it and reports it itself
    (:func:`stability_note`) rather than through a Python warning."""
    return {"nominal_elapsed": None if cfg.allow_unstable else cfg.nominal_elapsed}


def stability_note(cfg: NodeConfig, model) -> str | None:
    """Why ``model`` is unstable at the config's nominal elapsed time (None when it is not)."""
    from ..model.guarantees import stability_problem

    problem = stability_problem(model, cfg.nominal_elapsed)
    if problem is None:
        return None
    if cfg.allow_unstable:
        return f"{problem}; running it anyway (allow_unstable: true in {cfg.source})"
    return f"{problem}, or allow_unstable: true in {cfg.source}"
