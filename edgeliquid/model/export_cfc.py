"""Exporter, CfC part: ncps ``CfC`` / ``CfCCell`` / ``WiredCfCCell`` weights -> :class:`CfCModel`.

A module and a ``state_dict`` take one path: a module's constructor arguments that its
weights do not show (``mode``, the backbone activation) are read from its attributes and
handed over as a spec. Everything else is read from the weights: the class (``rnn_cell.``
prefix: the ``CfC`` layer; ``layer_{l}.``: wired), pure mode (``w_tau``/``A``), the
backbone (its Linear layers, renumbered ``backbone.{k}`` by ordinal: ncps names them by
their index in an ``nn.Sequential`` whose activation and dropout entries shift them),
mixed memory (``lstm.*``), the projection (``fc.*``) and every size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CheckpointError, UnsupportedModelError
from .cfc import CfCConfig, CfCModel, cfc_expected_shapes
from .export_spec import (
    check_cell_keys,
    check_names_count,
    resolve_required,
    validate_spec,
    yaml_value,
)

CFC_CLASSES = ("CfC", "CfCCell", "WiredCfCCell")
LSTM_NAMES = ("lstm.input_map.weight", "lstm.input_map.bias", "lstm.recurrent_map.weight")
_GATED = ("ff2", "time_a", "time_b")
_PURE = ("w_tau", "A")
# torch module class in a CfCCell backbone -> ncps' name for the activation.
_ACTIVATION_CLASSES = {"LeCun": "lecun_tanh", "SiLU": "silu", "ReLU": "relu", "Tanh": "tanh", "GELU": "gelu"}


def looks_like_cfc(keys) -> bool:
    """A state_dict holding a CfC cell (an ``ff1`` head) and no LTC (``gleak``)."""
    keys = list(keys)
    cfc = re.compile(r"(^|\.)(ff1\.weight|ff2\.weight|time_a\.weight|w_tau|backbone\.\d+\.weight)$")
    return any(cfc.search(k) for k in keys) and not any(k == "gleak" or k.endswith(".gleak") for k in keys)


# --------------------------------------------------------------------------- modules


def cfc_from_module(module: Any, source: str = "<module>") -> CfCModel:
    """Read an ncps ``CfC``, ``CfCCell`` or ``WiredCfCCell`` module into a :class:`CfCModel`."""
    kind = type(module).__name__
    cell = module.rnn_cell if kind == "CfC" else module
    wired = type(cell).__name__ == "WiredCfCCell"
    first = cell._layers[0] if wired else cell
    spec: dict[str, Any] = {"mode": str(first.mode)}
    if not wired and cell.backbone_layers > 0:
        spec["activation"] = _backbone_activation(cell.backbone, source)
    state = {k: v for k, v in module.state_dict().items() if hasattr(v, "detach")}
    model = cfc_from_state_dict(state, spec, source)
    if model.config.mixed_memory != bool(getattr(module, "use_mixed", False)):
        raise CheckpointError(f"{source}: use_mixed disagrees with the lstm.* parameters of the {kind}")
    model.info["source_kind"] = f"module:{kind}"
    if wired:
        model.info["wiring"] = type(cell._wiring).__name__
    return model


def _backbone_activation(backbone, source: str) -> str:
    found = set()
    for m in backbone:
        name = type(m).__name__
        if name in ("Linear", "Dropout"):
            continue
        if name not in _ACTIVATION_CLASSES:
            raise UnsupportedModelError(
                f"{source}: backbone activation {type(m).__module__}.{name} is not one of ncps CfCCell's "
                f"({', '.join(_ACTIVATION_CLASSES.values())})"
            )
        if name == "GELU" and getattr(m, "approximate", "none") != "none":
            raise UnsupportedModelError(
                f"{source}: GELU(approximate={m.approximate!r}) in the backbone; ncps uses 'none'"
            )
        found.add(_ACTIVATION_CLASSES[name])
    if len(found) != 1:
        raise UnsupportedModelError(f"{source}: the backbone mixes activations {sorted(found)}")
    return found.pop()


# ----------------------------------------------------------------------- state dicts


def cfc_from_state_dict(
    state: Mapping[str, Any],
    spec: Mapping[str, Any] | None = None,
    source: str = "<state_dict>",
    *,
    assume_defaults: bool = False,
    spec_source: str | None = None,
) -> CfCModel:
    """Build a :class:`CfCModel` from an ncps CfC ``state_dict`` plus what the weights do not record.

    ``mode`` (unless the weights are pure-mode) and, with a backbone, ``activation`` (the
    ``CfC`` name) or ``backbone_activation`` (the ``CfCCell`` name) must be in ``spec``, or
    are ncps' defaults with ``assume_defaults``. Stated keys the weights also tell are checked.

    Raises:
        CheckpointError: naming the file and the key: a missing or misshapen parameter, a
            spec value that disagrees with the weights, a missing spec key.
    """
    where = spec_source or "<spec>"
    spec = validate_spec(spec, where)
    cell_prefix, layer_ids = _find_cell(state, source)
    wired = layer_ids is not None
    is_layer = cell_prefix.endswith("rnn_cell.")
    base = cell_prefix[: -len("rnn_cell.")] if is_layer else cell_prefix
    cls = "CfC" if is_layer else "WiredCfCCell" if wired else "CfCCell"
    check_cell_keys(spec, "cfc", where, f"the state_dict {source}")
    names: dict[str, str] = {}  # edgeliquid name -> state_dict key
    prefixes = [f"layer_{i}." for i in layer_ids] if wired else [""]
    for p in prefixes:
        for k in state:
            if k.startswith(cell_prefix + p):
                rest = k[len(cell_prefix + p) :]
                names[p + rest] = k
    if is_layer:
        for n in (*LSTM_NAMES, "fc.weight", "fc.bias"):
            if base + n in state:
                names[n] = base + n
    params = {n: _to_array(state[k], k, source) for n, k in names.items()}

    pure = _mode_from_heads(params, prefixes, cell_prefix, source)
    backbone_layers, dropout = (0, None) if wired else _renumber_backbone(params, cell_prefix, source)
    for n in [f"{p}ff1.weight" for p in prefixes] + (["backbone.0.weight"] if backbone_layers else []):
        if params[n].ndim != 2:
            raise CheckpointError(
                f"{source}: {names[n]} has shape {list(params[n].shape)}; expected a matrix"
            )
    first = f"{prefixes[0]}ff1.weight"
    sizes = tuple(int(params[f"{p}ff1.weight"].shape[0]) for p in prefixes)
    units = sum(sizes)
    cat_key = "backbone.0.weight" if backbone_layers else first
    n_inputs = int(params[cat_key].shape[1]) - sizes[0]
    if n_inputs < 1:
        raise CheckpointError(
            f"{source}: {names[cat_key]} has shape {list(params[cat_key].shape)}; expected "
            f"[{'backbone_units' if backbone_layers else 'units'}, n_inputs + units] "
            f"with units {sizes[0]} from {names[first]}"
        )
    mixed = any(n.startswith("lstm.") for n in params)
    fc = params.get("fc.weight", params.get("fc.bias"))
    proj = int(fc.shape[0]) if fc is not None and fc.ndim >= 1 else 0
    _check_stated(spec, where, source, {"mixed_memory": mixed, "proj_size": proj})
    if backbone_layers:
        bu = int(params["backbone.0.weight"].shape[0])
        _check_stated(spec, where, source, {"backbone_layers": backbone_layers, "backbone_units": bu})
        if dropout is not None and "backbone_dropout" in spec and (spec["backbone_dropout"] > 0) != dropout:
            raise CheckpointError(
                f"{where}: backbone_dropout: {spec['backbone_dropout']} but the backbone's Linear indices in "
                f"{source} are those of {'a' if dropout else 'no'} dropout layer (ncps Sequential)"
            )
    else:
        bu = 0
        if not wired:
            _check_stated(spec, where, source, {"backbone_layers": 0})
        elif "backbone_layers" in spec or "backbone_units" in spec:
            raise CheckpointError(f"{where}: a wired CfC has no backbone (backbone_layers/backbone_units)")

    acts = {spec[k] for k in ("activation", "backbone_activation") if k in spec}
    if len(acts) > 1:
        raise CheckpointError(f"{where}: activation and backbone_activation disagree ({sorted(acts)})")
    act_key = "backbone_activation" if cls == "CfCCell" else "activation"
    hyper_spec = dict(spec)
    if acts:
        hyper_spec[act_key] = acts.pop()
    if pure:
        if spec.get("mode", "pure") != "pure":
            raise CheckpointError(
                f"{where}: mode: {spec['mode']} but {source} holds w_tau and A (mode pure), "
                "no ff2/time_a/time_b"
            )
        hyper_spec["mode"] = "pure"
    elif spec.get("mode") == "pure":
        raise CheckpointError(
            f"{where}: mode: pure but {source} holds ff2/time_a/time_b (mode default or no_gate)"
        )
    required = ("mode",) + ((act_key,) if backbone_layers else ())
    hyper, assumed = resolve_required(hyper_spec, cls, source, spec_source, assume_defaults, required)

    cfg = CfCConfig(
        n_inputs=n_inputs,
        units=units,
        mode=hyper["mode"],
        activation=hyper.get(act_key, "lecun_tanh"),
        backbone_units=bu,
        backbone_layers=backbone_layers,
        layer_sizes=sizes if wired else (),
        mixed_memory=mixed,
        proj_size=proj,
        sparse=not wired and "sparsity_mask" in params,
    )
    _check_shapes(cfg, params, names, source, cell_prefix, base)
    check_names_count(spec, n_inputs, cfg.n_outputs, where, f"the state_dict {source}")
    info = {"source_kind": "state_dict:" + cls}
    if assumed:
        info["assumed"] = ",".join(f"{k}={yaml_value(v)}" for k, v in assumed.items())
    for k in ("input_names", "output_names"):
        if k in spec:
            info[k] = ",".join(spec[k])
    return CfCModel(cfg, params, info=info, source=source)


def _find_cell(state: Mapping[str, Any], source: str) -> tuple[str, list[int] | None]:
    """The CfC cell's key prefix, and the wired layer numbers (``None`` unwired)."""
    heads = sorted(k[: -len("ff1.weight")] for k in state if k.endswith("ff1.weight"))
    layered = [re.fullmatch(r"(.*)layer_(\d+)\.", p) for p in heads]
    if heads and all(layered):
        bases = {m.group(1) for m in layered}
        ids = sorted(int(m.group(2)) for m in layered)
        if len(bases) == 1:
            if ids != list(range(len(ids))):
                missing = sorted(set(range(max(ids) + 1)) - set(ids))
                raise CheckpointError(
                    f"{source}: wired CfC layer {missing[0]} has no ff1 head "
                    f"({bases.pop()}layer_{missing[0]}.ff1.weight is missing)"
                )
            return bases.pop(), ids
    if not heads:
        raise CheckpointError(f"{source}: missing the CfC ff1 head (no key ends with ff1.weight)")
    if len(heads) != 1:
        raise CheckpointError(
            f"{source}: {len(heads)} CfC cells (ff1 heads under {heads}); save the ncps CfC, CfCCell "
            "or WiredCfCCell on its own, or its state_dict"
        )
    return heads[0], None


def _mode_from_heads(params, prefixes, cell_prefix: str, source: str) -> bool:
    """True for pure mode (``w_tau``, ``A``), False for the gated modes; a partial set is an error."""
    pure = False
    for i, p in enumerate(prefixes):
        has_g = [h for h in _GATED if f"{p}{h}.weight" in params]
        has_p = [h for h in _PURE if f"{p}{h}" in params]
        if has_p and has_g:
            raise CheckpointError(
                f"{source}: {cell_prefix}{p} holds both pure-mode ({', '.join(has_p)}) and gated "
                f"({', '.join(has_g)}) heads"
            )
        if not has_p and not has_g:
            raise CheckpointError(
                f"{source}: missing CfC heads under {cell_prefix}{p}: neither ff2, time_a, time_b "
                "(modes default/no_gate) nor w_tau, A (mode pure)"
            )
        if i and bool(has_p) != pure:
            raise CheckpointError(f"{source}: wired CfC layers disagree on the mode ({cell_prefix}{p})")
        pure = bool(has_p)
    return pure


def _renumber_backbone(
    params: dict[str, np.ndarray], cell_prefix: str, source: str
) -> tuple[int, bool | None]:
    """Rename ``backbone.{index}`` to ``backbone.{ordinal}`` in place.

    Returns:
        ``(layers, dropout)``: dropout is whether ncps' indices show dropout layers, ``None``
        when they cannot tell (fewer than 3 Linear layers).
    """
    found: dict[int, set[str]] = {}
    for n in list(params):
        m = re.fullmatch(r"backbone\.(\d+)\.(weight|bias)", n)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif n.startswith("backbone."):
            raise CheckpointError(f"{source}: unexpected backbone parameter {cell_prefix}{n}")
    idx = sorted(found)
    for i in idx:
        for part in ("weight", "bias"):
            if part not in found[i]:
                raise CheckpointError(f"{source}: {cell_prefix}backbone.{i}.{part} is missing")
    plain = [2 * k for k in range(len(idx))]
    with_dropout = [0] + [2 + 3 * (k - 1) for k in range(1, len(idx))]
    if idx not in (plain, with_dropout):
        raise CheckpointError(
            f"{source}: backbone Linear indices {idx} under {cell_prefix}backbone. are not those of an ncps "
            f"CfCCell (expected {plain}, or {with_dropout} with backbone_dropout > 0)"
        )
    moved = {}
    for k, i in enumerate(idx):
        for part in ("weight", "bias"):
            moved[f"backbone.{k}.{part}"] = params.pop(f"backbone.{i}.{part}")
    params.update(moved)
    return len(idx), (idx == with_dropout if len(idx) >= 3 else None)


def _check_stated(spec, where: str, source: str, found: dict[str, Any]) -> None:
    for key, value in found.items():
        if key in spec and spec[key] != value:
            raise CheckpointError(
                f"{where}: {key}: {yaml_value(spec[key])} but the weights in {source} "
                f"mean {yaml_value(value)}"
            )


def _check_shapes(
    cfg: CfCConfig,
    params: dict[str, np.ndarray],
    names: dict[str, str],
    source: str,
    cell_prefix: str,
    base: str,
) -> None:
    want = cfc_expected_shapes(cfg)
    for n in params:
        if n not in want:
            raise CheckpointError(f"{source}: unexpected parameter {names.get(n, n)} for this CfC")
    missing = [(base if n.startswith(("lstm.", "fc.")) else cell_prefix) + n for n in want if n not in params]
    if missing:
        raise CheckpointError(
            f"{source}: missing {', '.join(missing)} (a {cfg.mode}-mode CfC with {cfg.units} units needs "
            f"{'it' if len(missing) == 1 else 'them'})"
        )
    for n, shape in want.items():
        got = tuple(params[n].shape)
        if got != shape:
            raise CheckpointError(
                f"{source}: {names.get(n, n)} has shape {list(got)}, expected {list(shape)} "
                f"(n_inputs {cfg.n_inputs}, units {cfg.units}"
                f"{f', backbone_units {cfg.backbone_units}' if cfg.backbone_layers else ''})"
            )
        if not np.all(np.isfinite(params[n])):
            raise CheckpointError(f"{source}: {names.get(n, n)} holds NaN or infinite values")


def _to_array(value, key: str, source: str) -> np.ndarray:
    try:
        return value.detach().cpu().double().numpy().copy()
    except AttributeError:
        raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor") from None


__all__ = ["CFC_CLASSES", "cfc_from_module", "cfc_from_state_dict", "looks_like_cfc"]


def cfc_to_ncps_step(model: CfCModel):
    """An ncps-stepped peer for a CfC model: ``step(x [1, I] tensor, h, c) -> (y, h, c)``.

    Rebuilds ncps ``CfCCell`` modules (one per wiring layer, or one with the backbone), the
    ``LSTMCell`` and the ``fc`` Linear, holding ``model``'s parameters (float32), and chains
    them as ncps ``CfC.forward`` / ``WiredCfCCell.forward`` do. Used as the benchmark peer.
    """
    cfg, p = model.config, model.params
    if cfg.mixed_memory and cfg.mixed_memory_coupling == "input":
        raise UnsupportedModelError(
            f"{model.source}: mixed_memory_coupling 'input' (ncps.keras) has no ncps.torch CfC peer"
        )
    import torch
    from ncps.torch import CfCCell
    from ncps.torch.lstm import LSTMCell

    def t(a):
        return torch.tensor(np.asarray(a), dtype=torch.float32)

    cells = []
    for prefix, n_in, n in cfg.layers():
        mask = p.get(f"{prefix}sparsity_mask")
        layers = 0 if cfg.wired else cfg.backbone_layers
        cell = CfCCell(
            n_in,
            n,
            cfg.mode,
            backbone_activation=cfg.activation,
            backbone_units=cfg.backbone_units if layers else 0,
            backbone_layers=layers,
            sparsity_mask=None if mask is None else np.asarray(mask).T,  # ncps stores |mask.T|
        )
        state = {}
        for k in range(layers):  # ncps Sequential: Linear, activation (no dropout at inference)
            state[f"backbone.{2 * k}.weight"] = t(p[f"backbone.{k}.weight"])
            state[f"backbone.{2 * k}.bias"] = t(p[f"backbone.{k}.bias"])
        for name in cell.state_dict():
            if not name.startswith("backbone.") and name != "sparsity_mask":
                state[name] = t(p[f"{prefix}{name}"])
        if mask is not None:
            state["sparsity_mask"] = t(mask)
        cell.load_state_dict(state)
        cells.append((cell.eval(), n))
    lstm = None
    if cfg.mixed_memory:
        lstm = LSTMCell(cfg.n_inputs, cfg.units)
        lstm.load_state_dict({k.removeprefix("lstm."): t(v) for k, v in p.items() if k.startswith("lstm.")})
    fc = None
    if cfg.proj_size:
        fc = torch.nn.Linear(cfg.motor_size, cfg.proj_size)
        fc.load_state_dict({"weight": t(p["fc.weight"]), "bias": t(p["fc.bias"])})

    def step(x, h, c):
        with torch.no_grad():
            if lstm is not None:
                h, c = lstm(x, (h, c))
            outs, start, inp = [], 0, x
            for cell, n in cells:
                inp, _ = cell(inp, h[:, start : start + n], 1.0)
                outs.append(inp)
                start += n
            h = torch.cat(outs, dim=1)
            return (fc(inp) if fc is not None else inp), h, c

    return step
