"""Exporter (trainer side): ncps torch checkpoints -> one edgeliquid ONNX file.

One entry point, :func:`export_checkpoint`, picks a reader by what the file
holds (a pickled ``LTC``/``LTCCell`` or ``CfC``/``CfCCell``/``WiredCfCCell`` module,
a ``state_dict``, or a dict checkpoint holding one under ``key``); a file that is not a
torch checkpoint at all is named for what it is. CfC weights are read by
:mod:`edgeliquid.model.export_cfc`. A state_dict lacks some hyperparameters: they come
from a spec (:mod:`edgeliquid.model.export_spec`, docs/export.md). ncps.keras ``.keras``
files (and ``model.weights.h5`` with a spec) go to :mod:`edgeliquid.model.export_keras`,
which needs neither torch nor Keras. torch is imported only here, lazily: ``import
edgeliquid`` never imports it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, EdgeliquidError, UnsupportedModelError
from .cell import LSTM_PARAMS, CellConfig, LTCModel
from .cfc import CfCModel
from .export_cfc import CFC_CLASSES, cfc_from_module, cfc_from_state_dict, looks_like_cfc
from .export_keras import looks_like_keras, read_keras
from .export_spec import (
    DOCS,
    SPEC_KEYS,
    AssumedDefaultWarning,
    check_cell_keys,
    check_names_count,
    load_spec,
    resolve_required,
    validate_spec,
    yaml_value,
)

__all__ = [
    "AssumedDefaultWarning",
    "SPEC_KEYS",
    "describe_file",
    "export_checkpoint",
    "export_module",
    "load_spec",
    "model_from_module",
    "model_from_state_dict",
    "read_checkpoint",
    "to_ncps",
]

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


def model_from_module(module: Any, source: str = "<module>") -> LTCModel | CfCModel:
    """Read an ncps ``LTC``/``LTCCell`` (:class:`LTCModel`) or ``CfC``/``CfCCell``/``WiredCfCCell``
    (:class:`CfCModel`) module."""
    kind = type(module).__name__
    if kind == "LTC":
        cell, lstm = module.rnn_cell, (module.lstm if module.use_mixed else None)
    elif kind == "LTCCell":
        cell, lstm = module, None
    elif kind in CFC_CLASSES:
        return cfc_from_module(module, source)
    else:
        raise UnsupportedModelError(
            f"{source}: cannot export a {type(module).__module__}.{kind}; expected ncps.torch "
            "LTC, LTCCell, CfC, CfCCell or WiredCfCCell"
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
    state: Mapping[str, Any],
    spec: Mapping[str, Any] | None = None,
    source: str = "<state_dict>",
    *,
    assume_defaults: bool = False,
    spec_source: str | None = None,
) -> LTCModel | CfCModel:
    """Build a model from a ``state_dict`` plus the hyperparameters it lacks.

    A CfC state_dict (an ``ff1`` head, no ``gleak``) is read by
    :func:`edgeliquid.model.export_cfc.cfc_from_state_dict`; the rest of this is about LTC.

    The wiring comes from the masks, the mappings, mixed memory and (with an
    output mapping) the motor count from which keys are present. ``ode_unfolds``,
    ``epsilon`` and ``implicit_param_constraints`` are not in a state_dict: they
    must be in ``spec`` (ncps constructor names, see docs/export.md), or, with
    ``assume_defaults``, are taken from the ncps class the keys come from (``LTC``:
    constraints on; ``LTCCell``: off) with an :class:`AssumedDefaultWarning` each
    and an ``assumed`` entry in the model's metadata.

    Raises:
        CheckpointError: a bad or missing spec value, naming the key and ``spec_source``.
    """
    where = spec_source or "<spec>"
    spec = validate_spec(spec, where)
    keys = list(state.keys())
    if looks_like_cfc(keys):
        return cfc_from_state_dict(
            state, spec, source, assume_defaults=assume_defaults, spec_source=spec_source
        )
    gleak = [k for k in keys if k == "gleak" or k.endswith(".gleak")]
    if not gleak:
        raise CheckpointError(
            f"{source}: no LTC or CfC parameters found (expected a 'gleak' or 'ff1.weight' key, "
            f"got {keys[:8]}); "
            "for dict checkpoints pass --key NAME (e.g. model_state_dict)"
        )
    check_cell_keys(spec, "ltc", where, f"the state_dict {source}")
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
    if "mixed_memory" in spec and spec["mixed_memory"] != mixed:
        raise CheckpointError(
            f"{where}: mixed_memory: {yaml_value(spec['mixed_memory'])} but the state_dict {source} "
            f"{'has' if mixed else 'has no'} LSTM parameters"
        )
    if "sensory_sparsity_mask" not in params or "sparsity_mask" not in params:
        raise CheckpointError(
            f"{source}: missing sparsity masks ({prefix}sparsity_mask, {prefix}sensory_sparsity_mask)"
        )
    n_in, units = params["sensory_sparsity_mask"].shape
    in_map = _mapping_from_keys(params, "input", spec.get("input_mapping"), source, where)
    out_map = _mapping_from_keys(params, "output", spec.get("output_mapping"), source, where)
    if "output_w" in params:
        motors = int(params["output_w"].shape[0])
        if "motor_neurons" in spec and spec["motor_neurons"] != motors:
            raise CheckpointError(
                f"{where}: motor_neurons: {spec['motor_neurons']} but output_w in {source} has {motors}"
            )
    elif "motor_neurons" in spec:
        motors = spec["motor_neurons"]
    else:
        raise CheckpointError(
            f"{source}: output_mapping is 'none', so the motor count cannot be read from "
            f"the weights; give motor_neurons in the spec; see {DOCS}"
        )
    check_names_count(spec, int(n_in), motors, where, f"the state_dict {source}")
    cls = "LTC" if is_ltc else "LTCCell"
    hyper, assumed = resolve_required(spec, cls, source, spec_source, assume_defaults)
    cfg = CellConfig(
        n_inputs=int(n_in),
        units=int(units),
        motor_size=motors,
        ode_unfolds=hyper["ode_unfolds"],
        epsilon=float(hyper["epsilon"]),
        positivity="softplus" if hyper["implicit_param_constraints"] else "none",
        input_mapping=in_map,
        output_mapping=out_map,
        mixed_memory=mixed,
    )
    info = {"source_kind": "state_dict:" + cls}
    if assumed:
        # Provenance: which values nobody stated (edgeliquid.assumed in the model file).
        info["assumed"] = ",".join(f"{k}={yaml_value(v)}" for k, v in assumed.items())
    for k in ("input_names", "output_names"):
        if k in spec:
            info[k] = ",".join(spec[k])
    return LTCModel(cfg, params, info=info, source=source)


def _mapping_from_keys(params, side: str, declared: str | None, source: str, where: str) -> str:
    has_w, has_b = f"{side}_w" in params, f"{side}_b" in params
    found = "affine" if has_w and has_b else "linear" if has_w else "none"
    if has_b and not has_w:
        raise CheckpointError(f"{source}: {side}_b without {side}_w")
    if declared is not None and declared != found:
        raise CheckpointError(
            f"{where}: {side}_mapping: {declared} but the parameters in {source} mean {found!r}"
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
    assume_defaults: bool = False,
    spec_source: str | None = None,
) -> LTCModel | CfCModel:
    """Read a torch checkpoint file into an :class:`LTCModel` or :class:`CfCModel` (see module docstring)."""
    path = str(path)
    what = describe_file(path)
    if what is not None:
        raise CheckpointError(f"{path}: {what}")
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
        if not trust_pickle:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            raise CheckpointError(
                f"{path}: this checkpoint holds a pickled Python object"
                f"{f' ({found.group(1)})' if found else ''} (e.g. torch.save(model)); "
                "unpickling runs arbitrary code, so pass --trust-pickle (trust_pickle=True) "
                "only for files you made yourself, or save model.state_dict() instead"
            ) from None
        obj = _load_trusted(torch, path)
    except Exception as exc:  # corrupt zip member, truncated storage, ...
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
        model = model_from_state_dict(
            tensors, spec, source=path, assume_defaults=assume_defaults, spec_source=spec_source
        )
    else:
        if spec:
            raise CheckpointError(
                f"{path}: --spec is only for state_dicts; a module carries its own hyperparameters"
            )
        model = model_from_module(obj, source=path)
    model.info["source_sha256"] = sha256_of(path)
    return model


# Start of every legacy (pre-zip) torch.save file: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def describe_file(path: str) -> str | None:
    """``None`` when ``path`` looks like a ``torch.save`` file, else what it is instead.

    Reads the first bytes only (and a zip's directory): nothing is unpickled.

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    if not head:
        return "is empty (0 bytes), not a torch checkpoint"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _describe_zip(path)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return None
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return (
            "is an HDF5 file, not a torch checkpoint; an ncps.keras model.weights.h5 is exported "
            "with edgeliquid export FILE --spec spec.yaml (docs/export.md, Keras)"
        )
    if _is_onnx(path, head):
        return (
            "is an ONNX model file, not a torch checkpoint; export reads what torch.save wrote "
            "(an edgeliquid model file is already exported: try edgeliquid inspect)"
        )
    if _is_safetensors(head):
        return (
            "is a safetensors file, not a torch checkpoint; load it with safetensors.torch.load_file "
            "and torch.save the state_dict"
        )
    if head[0] == 0x80 and 2 <= head[1] <= 5 and _is_plain_pickle(path):
        return (
            "is a plain Python pickle (pickle.dump), not a torch checkpoint; "
            "save it with torch.save(model.state_dict(), path)"
        )
    text = _as_text(head)
    if text is not None:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"is a text file, not a torch checkpoint (starts with {first!r})"
    return f"is not a torch checkpoint (unknown format, first bytes {head[:8].hex(' ')})"


def _describe_zip(path: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "is a damaged zip archive (a truncated or corrupt torch checkpoint?)"
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "data.pkl" in base and "constants.pkl" in base:
        return (
            "is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
            "export the ncps module or its state_dict with torch.save"
        )
    if "data.pkl" in base:
        return None
    if "config.json" in names and "model.weights.h5" in names:
        return "is a Keras 3 .keras file, not a torch checkpoint; edgeliquid export reads it (docs/export.md)"
    return f"is a zip archive without data.pkl (holds {names[:3]}), not a torch checkpoint"


def _is_onnx(path: str, head: bytes) -> bool:
    # An ONNX ModelProto starts with field 1 (ir_version, tag 0x08); parse only then.
    if head[0] != 0x08 and not path.lower().endswith(".onnx"):
        return False
    try:
        import onnx

        m = onnx.load_model_from_string(Path(path).read_bytes())
    except Exception:  # not protobuf, or not a model
        return False
    return bool(m.graph.node or m.graph.initializer)


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header.
    return len(head) > 9 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 1 << 32


def _is_plain_pickle(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            for _ in pickletools.genops(f):  # walks the opcodes; runs nothing
                pass
    except Exception:
        return False
    return True


def _as_text(head: bytes) -> str | None:
    if b"\0" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the block
            return None
        text = head[: exc.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _load_trusted(torch, path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: could not unpickle the module ({type(exc).__name__}: {exc})"
        ) from None


def check_output_path(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, an output path that cannot be written as a model file.

    Raises:
        EdgeliquidError: naming ``path``: its folder is missing, it is a folder, or it is
            the checkpoint itself.
    """
    p = Path(path)
    folder = p.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise EdgeliquidError(f"{path}: cannot write the model file: folder {str(folder)!r} {what}")
    if p.is_dir():
        raise EdgeliquidError(f"{path}: is a folder; name the .onnx file to write")
    if checkpoint is not None and p.exists() and os.path.samefile(p, checkpoint):
        raise EdgeliquidError(f"{path}: is the checkpoint itself; write the model file elsewhere")


def _save(model: LTCModel | CfCModel, path: str | os.PathLike) -> None:
    from .file import save

    try:
        save(model, path)
    except OSError as exc:  # permissions, full disk: the folder was checked before
        raise EdgeliquidError(f"{path}: cannot write the model file ({exc.strerror or exc})") from None


def export_module(module: Any, path: str | os.PathLike, **info: str) -> LTCModel | CfCModel:
    """Export an ncps ``LTC``/``LTCCell``/``CfC``/``CfCCell``/``WiredCfCCell`` module to an
    edgeliquid ONNX file.

    The module carries every hyperparameter, so no spec is needed.

    Args:
        module: the trained torch module.
        path: where to write the ``.onnx`` file.
        **info: extra metadata stored as ``edgeliquid.<key>`` (e.g. ``input_names="a,b"``,
            ``training="..."``).

    Returns:
        the exported :class:`LTCModel` or :class:`CfCModel`.
    """
    check_output_path(path)
    model = model_from_module(module)
    buf = io.BytesIO()
    _torch().save(module.state_dict(), buf)
    model.info["source_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    model.info.update({k: str(v) for k, v in info.items()})
    _save(model, path)
    return model


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    key: str | None = None,
    spec: Mapping[str, Any] | str | os.PathLike | None = None,
    assume_defaults: bool = False,
) -> LTCModel | CfCModel:
    """Convert a checkpoint file to an edgeliquid ONNX file.

    Args:
        checkpoint: what ``torch.save`` wrote: a module (needs ``trust_pickle``), a
            state_dict, or a dict holding one under ``key``.
        path: the ``.onnx`` file to write; its folder must exist.
        spec: for a state_dict, the hyperparameters it lacks: a YAML path or a mapping
            (keys and types: docs/export.md).
        assume_defaults: fill hyperparameters missing from ``spec`` with ncps' defaults,
            each with an :class:`AssumedDefaultWarning`, recorded as ``edgeliquid.assumed``.

    Raises:
        CheckpointError: the file, the spec or the checkpoint's content, named.
        EdgeliquidError: ``path`` cannot be written.
    """
    check_output_path(path, checkpoint if os.path.exists(checkpoint) else None)
    spec_source = None
    if os.path.isfile(checkpoint) and looks_like_keras(str(checkpoint)):
        # ncps.keras: a .keras zip, or model.weights.h5 with a spec of its own keys (docs/export.md, Keras)
        if trust_pickle or key is not None or assume_defaults:
            with open(checkpoint, "rb") as f:
                what = "an HDF5 file (Keras weights)" if f.read(4) == b"\x89HDF" else "a Keras .keras file"
            raise CheckpointError(
                f"{checkpoint}: is {what}, not a torch checkpoint; export it without the torch-only "
                "options (docs/export.md, Keras)"
            )
        if spec is not None and not isinstance(spec, Mapping):
            spec_source = str(spec)
            spec = load_spec(spec, validate=False)
        model = read_keras(checkpoint, spec, spec_source)
        _save(model, path)
        return model
    if spec is not None and not isinstance(spec, Mapping):
        spec_source = str(spec)
        spec = load_spec(spec)
    model = read_checkpoint(
        checkpoint,
        trust_pickle=trust_pickle,
        key=key,
        spec=spec,
        assume_defaults=assume_defaults,
        spec_source=spec_source,
    )
    _save(model, path)
    return model


def to_ncps(model: LTCModel):
    """Rebuild an ncps ``LTC`` module holding ``model``'s parameters (float32).

    Used as the peer in benchmarks and as the oracle in tests of model files.
    """
    cfg = model.config
    if cfg.mixed_memory and cfg.mixed_memory_coupling == "input":
        raise UnsupportedModelError(
            f"{model.source}: mixed_memory_coupling 'input' (ncps.keras) has no ncps.torch LTC module"
        )
    torch = _torch()
    from ncps.torch import LTC
    from ncps.wirings import Wiring

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
