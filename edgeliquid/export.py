"""Exporter (trainer side): ncps torch checkpoints -> one edgeliquid ONNX file.

One entry point, :func:`export_checkpoint`, picks a reader by what the file
holds (a pickled ``LTC``/``LTCCell`` module, a ``state_dict``, or a dict
checkpoint holding one under ``key``). torch is imported only here, lazily:
``import edgeliquid`` never imports it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsupportedModelError
from .model import LSTM_PARAMS, CellConfig, LTCModel

#: Keys a ``--spec`` file may hold (ncps constructor names, plus the motor count).
SPEC_KEYS = (
    "ode_unfolds",
    "epsilon",
    "implicit_param_constraints",
    "input_mapping",
    "output_mapping",
    "mixed_memory",
    "motor_neurons",
    "input_names",
    "output_names",
)

LTC_PARAM_NAMES = (
    "gleak",
    "vleak",
    "cm",
    "sigma",
    "mu",
    "w",
    "erev",
    "sensory_sigma",
    "sensory_mu",
    "sensory_w",
    "sensory_erev",
    "sparsity_mask",
    "sensory_sparsity_mask",
    "input_w",
    "input_b",
    "output_w",
    "output_b",
)


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the install
        raise CheckpointError("exporting needs torch and ncps: pip install 'edgeliquid[export]'") from None
    return torch


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- modules


def model_from_module(module: Any, source: str = "<module>") -> LTCModel:
    """Read an ``ncps.torch.LTC`` or ``ncps.torch.LTCCell`` module into an :class:`LTCModel`."""
    kind = type(module).__name__
    if kind == "LTC":
        cell, lstm = module.rnn_cell, (module.lstm if module.use_mixed else None)
    elif kind == "LTCCell":
        cell, lstm = module, None
    elif kind in ("CfC", "CfCCell", "WiredCfCCell"):
        raise UnsupportedModelError(
            f"{source}: {kind} (closed-form continuous-time) models are not supported yet; "
            "edgeliquid converts ncps LTC and LTCCell"
        )
    else:
        raise UnsupportedModelError(
            f"{source}: cannot export a {type(module).__module__}.{kind}; "
            "expected ncps.torch.LTC or ncps.torch.LTCCell"
        )
    wiring = cell._wiring
    cfg = CellConfig(
        n_inputs=int(wiring.input_dim),
        units=int(wiring.units),
        motor_size=int(wiring.output_dim),
        ode_unfolds=int(cell._ode_unfolds),
        epsilon=float(cell._epsilon),
        positivity="softplus" if cell._implicit_param_constraints else "none",
        input_mapping=cell._input_mapping,
        output_mapping=cell._output_mapping,
        mixed_memory=lstm is not None,
    )
    params = {k: _np(v) for k, v in cell._params.items()}
    if lstm is not None:
        params["lstm.input_map.weight"] = _np(lstm.input_map.weight)
        params["lstm.input_map.bias"] = _np(lstm.input_map.bias)
        params["lstm.recurrent_map.weight"] = _np(lstm.recurrent_map.weight)
    roles = [str(wiring.get_type_of_neuron(n)) for n in range(cfg.units)]
    info = {"wiring": type(wiring).__name__, "source_kind": f"module:{kind}"}
    return LTCModel(cfg, params, roles=roles, info=info, source=source)


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


# ----------------------------------------------------------------------- state dicts


def model_from_state_dict(
    state: Mapping[str, Any], spec: Mapping[str, Any] | None = None, source: str = "<state_dict>"
) -> LTCModel:
    """Build a model from a ``state_dict`` plus the hyperparameters it lacks.

    The wiring comes from the masks, mappings and mixed memory from which keys
    are present; ``spec`` (ncps constructor names) supplies ``ode_unfolds``,
    ``epsilon`` and ``implicit_param_constraints``, defaulting like the ncps
    class the keys come from (``LTC``: constraints on; ``LTCCell``: off).
    """
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise CheckpointError(f"{source}: unknown spec keys {unknown}; allowed: {list(SPEC_KEYS)}")
    keys = list(state.keys())
    gleak = [k for k in keys if k == "gleak" or k.endswith(".gleak")]
    if not gleak:
        if any("ff1" in k or "backbone" in k for k in keys):
            raise UnsupportedModelError(
                f"{source}: this looks like a CfC state_dict (keys {keys[:4]}...); "
                "CfC models are not supported yet, edgeliquid converts ncps LTC and LTCCell"
            )
        raise CheckpointError(
            f"{source}: no LTC parameters found (expected a 'gleak' key, got {keys[:8]}); "
            "for dict checkpoints pass --key NAME (e.g. model_state_dict)"
        )
    prefix = gleak[0][: -len("gleak")]
    is_ltc = prefix.endswith("rnn_cell.")
    base = prefix[: -len("rnn_cell.")] if is_ltc else prefix
    params: dict[str, np.ndarray] = {}
    for name in LTC_PARAM_NAMES:
        if prefix + name in state:
            params[name] = _to_array(state[prefix + name], prefix + name, source)
    has_lstm = [n for n in LSTM_PARAMS if base + n in state]
    for name in has_lstm:
        params[name] = _to_array(state[base + name], base + name, source)
    mixed = bool(has_lstm)
    if "mixed_memory" in spec and bool(spec["mixed_memory"]) != mixed:
        raise CheckpointError(
            f"{source}: spec says mixed_memory={spec['mixed_memory']!r} but the state_dict "
            f"{'has' if mixed else 'has no'} LSTM parameters"
        )
    if "sensory_sparsity_mask" not in params or "sparsity_mask" not in params:
        raise CheckpointError(
            f"{source}: missing sparsity masks ({prefix}sparsity_mask, {prefix}sensory_sparsity_mask)"
        )
    n_in, units = params["sensory_sparsity_mask"].shape
    in_map = _mapping_from_keys(params, "input", spec.get("input_mapping"), source)
    out_map = _mapping_from_keys(params, "output", spec.get("output_mapping"), source)
    if "output_w" in params:
        motors = int(params["output_w"].shape[0])
        if "motor_neurons" in spec and int(spec["motor_neurons"]) != motors:
            raise CheckpointError(
                f"{source}: spec motor_neurons={spec['motor_neurons']!r} but output_w has {motors}"
            )
    elif "motor_neurons" in spec:
        motors = int(spec["motor_neurons"])
    else:
        raise CheckpointError(
            f"{source}: output_mapping is 'none', so the motor count cannot be read from "
            "the weights; give motor_neurons in the spec"
        )
    implicit = spec.get("implicit_param_constraints", True if is_ltc else False)
    cfg = CellConfig(
        n_inputs=int(n_in),
        units=int(units),
        motor_size=motors,
        ode_unfolds=int(spec.get("ode_unfolds", 6)),
        epsilon=float(spec.get("epsilon", 1e-8)),
        positivity="softplus" if implicit else "none",
        input_mapping=in_map,
        output_mapping=out_map,
        mixed_memory=mixed,
    )
    info = {"source_kind": "state_dict:" + ("LTC" if is_ltc else "LTCCell")}
    for k in ("input_names", "output_names"):
        if k in spec:
            info[k] = ",".join(str(n) for n in spec[k])
    return LTCModel(cfg, params, info=info, source=source)


def _mapping_from_keys(params, side: str, declared: str | None, source: str) -> str:
    has_w, has_b = f"{side}_w" in params, f"{side}_b" in params
    found = "affine" if has_w and has_b else "linear" if has_w else "none"
    if has_b and not has_w:
        raise CheckpointError(f"{source}: {side}_b without {side}_w")
    if declared is not None and declared != found:
        raise CheckpointError(
            f"{source}: spec says {side}_mapping={declared!r} but the parameters present mean {found!r}"
        )
    return found


def _to_array(value, key: str, source: str) -> np.ndarray:
    try:
        return value.detach().cpu().double().numpy().copy()
    except AttributeError:
        raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor") from None


# ----------------------------------------------------------------------- checkpoints


def read_checkpoint(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    key: str | None = None,
    spec: Mapping[str, Any] | None = None,
) -> LTCModel:
    """Read a torch checkpoint file into an :class:`LTCModel` (see module docstring)."""
    torch = _torch()
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _is_torch_archive(path) and "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: this checkpoint holds a pickled Python object (e.g. torch.save(model)); "
                "unpickling runs arbitrary code, so pass --trust-pickle (trust_pickle=True) "
                "only for files you made yourself, or save model.state_dict() instead"
            ) from None
        obj = _load_trusted(torch, path)
    except Exception as exc:  # corrupt zip, truncated file, wrong magic, ...
        raise CheckpointError(
            f"{path}: corrupt or truncated torch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: key {key!r} not found in checkpoint (has {have})")
        obj = obj[key]
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if hasattr(v, "detach")}
        if not tensors:
            raise CheckpointError(
                f"{path}: a dict without tensors (keys {list(obj)[:10]}); pass --key to pick "
                "the entry holding the state_dict"
            )
        model = model_from_state_dict(tensors, spec, source=path)
    else:
        if spec:
            raise CheckpointError(
                f"{path}: --spec is only for state_dicts; a module carries its own hyperparameters"
            )
        model = model_from_module(obj, source=path)
    model.info["source_sha256"] = sha256_of(path)
    return model


def _is_torch_archive(path: str) -> bool:
    return zipfile.is_zipfile(path)


def _load_trusted(torch, path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: could not unpickle the module ({type(exc).__name__}: {exc})"
        ) from None


def export_module(module: Any, path: str | os.PathLike, **info: str) -> LTCModel:
    """Export an ncps ``LTC``/``LTCCell`` module to an edgeliquid ONNX file.

    Args:
        module: the trained torch module.
        path: where to write the ``.onnx`` file.
        **info: extra metadata stored as ``edgeliquid.<key>`` (e.g. ``input_names="a,b"``,
            ``training="..."``).

    Returns:
        the exported :class:`LTCModel`.
    """
    from .modelfile import save

    model = model_from_module(module)
    buf = io.BytesIO()
    _torch().save(module.state_dict(), buf)
    model.info["source_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    model.info.update({k: str(v) for k, v in info.items()})
    save(model, path)
    return model


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    key: str | None = None,
    spec: Mapping[str, Any] | str | os.PathLike | None = None,
) -> LTCModel:
    """Convert a checkpoint file to an edgeliquid ONNX file; ``spec`` may be a YAML path."""
    from .modelfile import save

    if spec is not None and not isinstance(spec, Mapping):
        spec = load_spec(spec)
    model = read_checkpoint(checkpoint, trust_pickle=trust_pickle, key=key, spec=spec)
    save(model, path)
    return model


def load_spec(path: str | os.PathLike) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot read spec ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: spec must be a mapping of ncps constructor names")
    return data


def to_ncps(model: LTCModel):
    """Rebuild an ncps ``LTC`` module holding ``model``'s parameters (float32).

    Used as the peer in benchmarks and as the oracle in tests of model files.
    """
    torch = _torch()
    from ncps.torch import LTC
    from ncps.wirings import Wiring

    cfg = model.config
    wiring = Wiring(cfg.units)
    wiring.set_output_dim(cfg.motor_size)
    wiring.build(cfg.n_inputs)
    wiring.adjacency_matrix = model.params["sparsity_mask"].astype(np.int32)
    wiring.sensory_adjacency_matrix = model.params["sensory_sparsity_mask"].astype(np.int32)
    module = LTC(
        cfg.n_inputs,
        wiring,
        mixed_memory=cfg.mixed_memory,
        input_mapping=cfg.input_mapping,
        output_mapping=cfg.output_mapping,
        ode_unfolds=cfg.ode_unfolds,
        epsilon=cfg.epsilon,
        implicit_param_constraints=cfg.positivity == "softplus",
    )
    state = {
        ("" if k.startswith("lstm.") else "rnn_cell.") + k: torch.tensor(v, dtype=torch.float32)
        for k, v in model.params.items()
    }
    module.load_state_dict(state, strict=True)
    return module
