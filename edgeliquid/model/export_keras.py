"""Exporter, Keras part: ncps ``LTC`` / ``CfC`` layers trained with ``ncps.keras`` (Keras 3).

A Keras 3 ``.keras`` file is a zip of ``config.json`` (the layers and their constructor
arguments) and ``model.weights.h5`` (the variables, ``layers/<layer>/.../vars/<i>``, numbered
in the order the layer creates them). Both are read with ``zipfile``, ``json`` and ``h5py``:
neither Keras nor TensorFlow is needed. ``h5py`` is imported lazily (``pip install
'edgeliquid[keras]'``), as is ``ncps.wirings`` (pure numpy), which rebuilds a wiring's masks
from its seed: ncps.keras does not store the masks.

What differs from ncps.torch, and how it is represented (docs/export.md, "Keras"):

* LTC: the same ODE and solver; gleak/cm/w/sensory_w are kept non-negative by Keras
  ``NonNeg`` constraints, so the stored values are used as they are (``positivity = none``).
* CfC: the gate is ``sigmoid(-time_a*ts + time_b)`` and ff1/ff2 have no tanh: the file says
  ``formulation = keras`` and keeps the weights; pure mode is the same equation. Keras
  kernels are ``[in, out]`` (torch Linear ``[out, in]``): transposed. A wired cell's mask
  holds the wiring's polarities (ncps.torch takes ``|mask|``): the signs are folded into
  ff1/ff2 so the file's mask is 0/1.
* Around the liquid layer: ``Rescaling``/``Normalization`` in front are folded into the
  input side, one linear ``Dense`` after into the output side (LTC: only a diagonal one);
  ``Dropout`` is the identity at inference; anything else is refused naming the layer.
* Mixed memory: ncps.keras's ``MixedMemoryRNN`` feeds the LSTM's output into the cell's
  *input* and keeps the cell's own state (ncps.torch replaces the state): the file says
  ``mixed_memory_coupling = input``; the cell is sized for U inputs, the model's inputs are the
  LSTM's, folded input layers go into its ``input_kernel``. Only ``forget_gate_bias = 1.0``
  (the default, ncps.torch's constant) is exported.
* An ``NCP`` wiring: ncps.keras saves it without its seed (neuron lists and ``seed: null``);
  the user states the seed (``--spec``), the rebuilt wiring is checked against the file's
  neuron lists and, for LTC, against ``erev``'s exact zeros.
* A ``CfCCell`` ``sparsity_mask`` is in config.json: its product with ff1/ff2 is stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .cell import CellConfig, LTCModel
from .cfc import CfCConfig, CfCModel, cfc_expected_shapes
from .checks import LIMITS

#: config.json is a few kB for any ncps model; a base-class Wiring holds its adjacency lists.
MAX_CONFIG_BYTES = 32 * 1024 * 1024
#: Nesting of config.json (json's own recursion limit is far higher and raises RecursionError).
MAX_CONFIG_DEPTH = 64
_LIQUID = ("LTC", "CfC", "RNN")
_AFFINE_IN = ("Rescaling", "Normalization")
_NOOP = ("Dropout", "InputLayer")
_ACTIVATIONS = {"lecun_tanh": "lecun_tanh", "tanh": "tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
_WIRINGS = ("FullyConnected", "Random", "AutoNCP", "NCP", "Wiring")


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - depends on the install
        raise CheckpointError("exporting Keras files needs h5py: pip install 'edgeliquid[keras]'") from None
    return h5py


# ----------------------------------------------------------------------------- reading


def read_keras(
    path: str | os.PathLike, spec: Mapping[str, Any] | None = None, spec_source: str | None = None
) -> LTCModel | CfCModel:
    """Read a ``.keras`` file, or a ``model.weights.h5`` with ``spec`` (docs/export.md, "Keras").

    Raises:
        CheckpointError: one line naming the file and the layer or key at fault.
    """
    path = str(path)
    size = os.path.getsize(path)
    if size > LIMITS["file_bytes"]:
        raise CheckpointError(f"{path}: {size} bytes is over the limit {LIMITS['file_bytes']}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        if not spec:
            raise CheckpointError(
                f"{path}: a Keras weights file holds no layer configuration; pass --spec FILE.yaml "
                "(docs/export.md, Keras) or export the whole .keras file"
            )
        layer = _layer_from_spec(spec, spec_source or "<spec>")
        with open(path, "rb") as f:
            weights = f.read(LIMITS["file_bytes"] + 1)
        chain = [layer]
        config_source = spec_source or "<spec>"
        ncp_seed = None
    else:
        ncp_seed = _ncp_seed_from_spec(spec, spec_source or "<spec>", path) if spec else None
        config, weights = _read_zip(path)
        chain = _chain(config, path)
        config_source = path
    h5py = _h5py()
    try:
        with h5py.File(io.BytesIO(weights), "r") as h5:
            model = _convert(chain, h5, path, config_source, ncp_seed)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed Keras weights ({type(exc).__name__}: {exc})") from None
    if ncp_seed is not None and model.info.get("wiring") != "NCP":
        raise CheckpointError(
            f"{spec_source or '<spec>'}: --spec with a .keras file only gives an NCP wiring's seed; the "
            f"file's liquid layer has {model.info.get('wiring') or 'no'} wiring, rebuilt from the file alone"
        )
    model.info["source_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return model


def _ncp_seed_from_spec(spec: Mapping[str, Any], where: str, path: str) -> dict[str, Any]:
    """The ``wiring:`` of a spec given with a ``.keras`` file: an NCP's seed (and, optionally, its
    constructor arguments, checked against the file)."""
    wiring = spec.get("wiring")
    if set(spec) != {"wiring"} or not isinstance(wiring, dict):
        raise CheckpointError(
            f"{where}: with a .keras file ({path}) the spec may only hold 'wiring: {{seed: N}}' (an NCP "
            "wiring's seed, which ncps.keras does not save); the rest is read from the file"
        )
    extra = sorted(set(wiring) - set(_NCP_ARGS) - {"seed", "class"})
    if extra or wiring.get("class", "NCP") != "NCP" or "seed" not in wiring:
        raise CheckpointError(
            f"{where}: wiring needs seed (the NCP's seed) and may repeat class: NCP and "
            f"{', '.join(_NCP_ARGS)}; got {', '.join(sorted(map(str, wiring)))}"
        )
    return {k: v for k, v in wiring.items() if k != "class"}


def _read_zip(path: str) -> tuple[Any, bytes]:
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist()}
            for name, limit in (
                ("config.json", MAX_CONFIG_BYTES),
                ("model.weights.h5", LIMITS["file_bytes"]),
            ):
                if name not in members:
                    raise CheckpointError(
                        f"{path}: a .keras file holds config.json and model.weights.h5; {name} is missing "
                        f"(has {sorted(members)[:5]})"
                    )
                if members[name].file_size > limit:
                    raise CheckpointError(
                        f"{path}: {name} declares {members[name].file_size} bytes, over {limit}"
                    )
            # The declared size can lie (a zip bomb): read at most the limit plus one byte.
            with z.open("config.json") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
            with z.open("model.weights.h5") as f:
                weights = f.read(LIMITS["file_bytes"] + 1)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: damaged .keras zip archive ({type(exc).__name__}: {exc})") from None
    if len(raw) > MAX_CONFIG_BYTES or len(weights) > LIMITS["file_bytes"]:
        raise CheckpointError(f"{path}: a member is larger than it declares (corrupt or hostile zip)")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: config.json is not valid JSON ({str(exc)[:80]})") from None
    _check_depth(config, path)
    return config, weights


def _check_depth(obj: Any, path: str) -> None:
    stack = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if d > MAX_CONFIG_DEPTH:
            raise CheckpointError(f"{path}: config.json nests deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(o, dict):
            stack += [(v, d + 1) for v in o.values()]
        elif isinstance(o, list):
            stack += [(v, d + 1) for v in o]


def _get(d: Any, key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(d, dict) or key not in d or not isinstance(d[key], kind):
        raise CheckpointError(f"{where}: config entry {key!r} is missing or of the wrong type")
    return d[key]


def _chain(config: Any, path: str) -> list[dict]:
    """The model's layers in order (a Sequential, a single-chain functional model, or one layer)."""
    cls = _get(config, "class_name", str, f"{path}: config.json")
    if cls in _LIQUID:
        return [config]
    cfg = _get(config, "config", dict, f"{path}: config.json")
    layers = _get(cfg, "layers", list, f"{path}: config.json {cls}")
    if cls == "Sequential":
        return [la for la in layers if isinstance(la, dict) and la.get("class_name") != "InputLayer"]
    if cls not in ("Functional", "Model"):
        raise CheckpointError(f"{path}: top-level {cls!r} is not a Sequential or functional Keras model")
    chain, prev = [], None
    for la in layers:
        name = _get(la, "name", str, f"{path}: config.json layer")
        inbound = la.get("inbound_nodes") or []
        if la.get("class_name") == "InputLayer":
            if prev is not None:
                raise CheckpointError(
                    f"{path}: the functional model has several inputs ({name}); one is supported"
                )
            prev = name
            continue
        sources = [
            a["config"]["keras_history"][0]
            for node in inbound
            for a in (node.get("args") or [])
            if isinstance(a, dict) and isinstance(a.get("config"), dict) and "keras_history" in a["config"]
        ]
        if len(inbound) != 1 or sources != [prev]:
            raise CheckpointError(
                f"{path}: layer {name!r} is not fed by the previous layer alone; only a single chain "
                "input -> ... -> output is exported"
            )
        chain.append(la)
        prev = name
    return chain


# --------------------------------------------------------------------------- weights


def _group(h5, layer: dict, where: str):
    """The h5 group of a top-level layer: ``layers/<g>`` whose ``vars`` says the layer's name."""
    name = layer.get("config", {}).get("name") or layer.get("name")
    top = h5.get("layers")
    if top is None:
        raise CheckpointError(f"{where}: the weights file has no 'layers' group")
    if "_h5_group" in layer:
        if layer["_h5_group"] not in top:
            raise CheckpointError(f"{where}: layer group {layer['_h5_group']!r} not in the weights file")
        return top[layer["_h5_group"]]
    for key in top:
        g = top[key]
        if "vars" in g and g["vars"].attrs.get("name") == name:
            return g
    raise CheckpointError(f"{where}: no weights found for layer {name!r}")


def _vars(g, where: str, n: int | None = None) -> list[np.ndarray]:
    v = g.get("vars")
    if v is None:
        return []
    keys = sorted(v, key=lambda k: int(k) if k.isdigit() else -1)
    if any(not k.isdigit() for k in keys) or [int(k) for k in keys] != list(range(len(keys))):
        raise CheckpointError(f"{where}: variables {keys[:6]} are not numbered 0, 1, ...")
    if n is not None and len(keys) not in ((n,) if isinstance(n, int) else n):
        raise CheckpointError(f"{where}: {len(keys)} variables, expected {n}")
    out = []
    for k in keys:
        ds = v[k]
        if not hasattr(ds, "shape") or ds.dtype.kind not in "fiu" or ds.size > LIMITS["parameters"]:
            raise CheckpointError(f"{where}/vars/{k}: not a numeric array within the parameter limit")
        a = np.asarray(ds[()], dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise CheckpointError(f"{where}/vars/{k}: holds NaN or infinite values")
        out.append(a)
    return out


def _shape(a: np.ndarray, want: tuple[int, ...], where: str) -> np.ndarray:
    if a.shape != want:
        raise CheckpointError(f"{where}: shape {list(a.shape)}, expected {list(want)}")
    return a


# ---------------------------------------------------------------------------- wirings


#: ncps.wirings constructor arguments of NCP (besides ``seed``), as its get_config names them.
_NCP_ARGS = (
    "inter_neurons",
    "command_neurons",
    "motor_neurons",
    "sensory_fanout",
    "inter_fanout",
    "recurrent_command_synapses",
    "motor_fanin",
)
#: get_config keys of each wiring class: a cell's ``wiring`` entry is the bare dict, without its class.
_WIRING_KEYS = {
    "NCP": frozenset(_NCP_ARGS + ("seed",)),
    "AutoNCP": frozenset(("units", "output_size", "sparsity_level", "seed")),
    "FullyConnected": frozenset(("units", "output_dim", "erev_init_seed", "self_connections")),
    "Random": frozenset(("units", "output_dim", "sparsity_level", "random_seed")),
}


def _wirings():
    try:
        from ncps import wirings
    except ImportError:  # pragma: no cover
        raise CheckpointError(
            "exporting wired Keras models needs ncps: pip install 'edgeliquid[keras]'"
        ) from None
    return wirings


def _wiring(serialized: Any, n_inputs: int, where: str, ncp_seed: Mapping[str, Any] | None = None):
    """Rebuild an ncps wiring from its serialized config and build it for ``n_inputs``.

    ``ncp_seed`` is the user's ``wiring:`` spec for a ``.keras`` file whose wiring is an NCP
    (ncps.keras does not save an NCP's seed). Returns ``(class name, built wiring)``.
    """
    wirings = _wirings()
    if isinstance(serialized, dict) and "class_name" in serialized:
        cls, conf = serialized["class_name"], serialized.get("config")
    elif isinstance(serialized, dict) and "class" in serialized:  # a spec
        cls, conf = serialized["class"], {k: v for k, v in serialized.items() if k != "class"}
    elif isinstance(serialized, dict) and "adjacency_matrix" in serialized:
        cls, conf = "Wiring", serialized
    elif isinstance(serialized, dict) and frozenset(serialized) in _WIRING_KEYS.values():
        # keras.layers.RNN(LTCCell(wiring)) stores the wiring's get_config alone
        cls = next(c for c, keys in _WIRING_KEYS.items() if keys == frozenset(serialized))
        conf = serialized
    else:
        raise CheckpointError(f"{where}: the wiring's class is not recorded")
    if cls not in _WIRINGS or not isinstance(conf, dict):
        raise CheckpointError(f"{where}: wiring {cls!r} is not one of {', '.join(_WIRINGS)}")
    if cls == "NCP":
        return cls, _ncp(conf, n_inputs, where, ncp_seed)
    units = conf.get("units")
    if not isinstance(units, int) or not 1 <= units <= LIMITS["units"]:
        raise CheckpointError(f"{where}: wiring units {str(units)[:20]} outside 1..{LIMITS['units']}")
    try:
        w = getattr(wirings, cls).from_config(dict(conf))
        if cls == "Wiring":
            w.input_dim = None
        w.build(n_inputs)
    except Exception as exc:  # ncps raises ValueError/TypeError on bad arguments
        raise CheckpointError(f"{where}: cannot rebuild wiring {cls} ({type(exc).__name__}: {exc})") from None
    return cls, w


def _ncp(conf: dict, n_inputs: int, where: str, ncp_seed: Mapping[str, Any] | None):
    """An NCP wiring: from a spec's constructor arguments + seed, or from a ``.keras`` config
    (neuron lists, ``seed: null``) + the user's seed, the lists checked against the rebuilt wiring."""
    from_file = any(isinstance(conf.get(k), list) for k in _NCP_ARGS[:3])
    if from_file:
        if ncp_seed is None:
            raise CheckpointError(
                f"{where}: ncps.keras saves an NCP wiring without its seed (get_config writes seed: null), "
                "so its masks cannot be rebuilt from the file; pass --spec with 'wiring: {seed: N}' "
                "(the seed the NCP was built with; ncps's default is 22222), docs/export.md, Keras"
            )
        args = {}
        for k in _NCP_ARGS:
            v = conf.get(k)
            ok = isinstance(v, list) and all(isinstance(i, int) for i in v) if k in _NCP_ARGS[:3] else True
            if not ok:
                raise CheckpointError(f"{where}: NCP {k} in the config is not a list of neuron ids")
            args[k] = len(v) if k in _NCP_ARGS[:3] else v
        for k, v in ncp_seed.items():
            if k in args and args[k] != v:
                raise CheckpointError(
                    f"{where}: the spec's wiring {k}: {v} disagrees with the file's NCP ({args[k]})"
                )
        seed = ncp_seed.get("seed")
    else:
        missing = [k for k in _NCP_ARGS + ("seed",) if k not in conf]
        if missing:
            raise CheckpointError(
                f"{where}: an NCP wiring needs {', '.join(missing)} (the NCP constructor arguments and the "
                "seed it was built with; ncps's default seed is 22222)"
            )
        args, seed = {k: conf[k] for k in _NCP_ARGS}, conf["seed"]
    for k, v in (*args.items(), ("seed", seed)):
        top = (1 << 32) - 1 if k == "seed" else LIMITS["units"]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
            raise CheckpointError(f"{where}: NCP {k} must be an integer in 0..{top}, got {str(v)[:20]}")
    try:
        w = _wirings().NCP(**args, seed=seed)
        w.build(n_inputs)
    except Exception as exc:  # ncps raises ValueError on inconsistent fan-outs
        raise CheckpointError(f"{where}: cannot rebuild wiring NCP ({type(exc).__name__}: {exc})") from None
    if from_file:
        for li, k in enumerate(("inter_neurons", "command_neurons", "motor_neurons")):
            if list(w.get_neurons_of_layer(li)) != conf[k]:
                raise CheckpointError(
                    f"{where}: the file's NCP {k} {str(conf[k])[:40]} differ from the rebuilt wiring's "
                    f"{str(list(w.get_neurons_of_layer(li)))[:40]}"
                )
    return w


# ------------------------------------------------------------------------- the layer


def _cell_config(layer: dict, where: str) -> tuple[str, dict, dict, bool]:
    """(cell class, cell config, layer config, mixed memory) of an LTC / CfC / RNN layer.

    A ``MixedMemoryRNN`` (``mixed_memory=True``) is unwrapped: its ``rnn_cell`` is the cell
    (ncps.keras writes that cell's get_config without its class: the layer's class says it)."""
    conf = _get(layer, "config", dict, where)
    cell = _get(conf, "cell", dict, where)
    ccls = _get(cell, "class_name", str, where)
    cconf = _get(cell, "config", dict, where)
    mixed = ccls == "MixedMemoryRNN"
    if mixed:
        bias = cconf.get("forget_gate_bias", 1.0)
        if bias != 1.0 or isinstance(bias, bool):
            raise CheckpointError(
                f"{where}: MixedMemoryRNN forget_gate_bias {str(bias)[:20]}; only 1.0 (ncps' default, the "
                "model file's LSTM) is exported"
            )
        inner = _get(cconf, "rnn_cell", dict, where)
        if isinstance(inner.get("class_name"), str) and isinstance(inner.get("config"), dict):
            ccls, cconf = inner["class_name"], inner["config"]
        else:
            wired = isinstance(inner.get("wiring"), dict)
            ccls = {"LTC": "LTCCell", "CfC": "WiredCfCCell" if wired else "CfCCell"}.get(
                str(layer.get("class_name")), "MixedMemoryRNN"
            )
            cconf = inner
    if ccls not in ("LTCCell", "CfCCell", "WiredCfCCell"):
        raise CheckpointError(
            f"{where}: RNN cell {ccls!r} is not an ncps.keras LTCCell, CfCCell or WiredCfCCell"
            + (" (inside a MixedMemoryRNN)" if mixed else "")
        )
    return ccls, cconf, conf, mixed


def _mixed_memory(model: LTCModel | CfCModel, mg, where: str) -> None:
    """Add a MixedMemoryRNN's LSTM (group ``mg``) to a model read from its ``rnn_cell``.

    The cell was built for the LSTM's output (``n_inputs`` = units so far); the model's inputs
    become the LSTM's. Keras ``[in, 4U]`` kernels are transposed to ncps.torch's ``[4U, in]``
    (same gate order i, input, forget, output); the one bias is ``input_map.bias``."""
    u = model.config.units
    wi, wr, b = _vars(mg, f"{where} MixedMemoryRNN", 3)
    n_in = wi.shape[0] if wi.ndim == 2 else 0
    if not 1 <= n_in <= LIMITS["n_inputs"]:
        raise CheckpointError(f"{where}: MixedMemoryRNN input_kernel shape {list(wi.shape)} gives no inputs")
    if model.config.n_inputs != u:
        raise CheckpointError(
            f"{where}: the mixed-memory cell takes {model.config.n_inputs} inputs; ncps.keras builds it "
            f"for the LSTM's {u} outputs"
        )
    model.params["lstm.input_map.weight"] = _shape(wi, (n_in, 4 * u), f"{where} input_kernel").T.copy()
    model.params["lstm.input_map.bias"] = _shape(b, (4 * u,), f"{where} MixedMemoryRNN bias")
    model.params["lstm.recurrent_map.weight"] = _shape(wr, (u, 4 * u), f"{where} recurrent_kernel").T.copy()
    model.config = model.config.replace(n_inputs=n_in, mixed_memory=True, mixed_memory_coupling="input")


def _convert(
    chain: list[dict], h5, path: str, config_source: str, ncp_seed: Mapping[str, Any] | None = None
) -> LTCModel | CfCModel:
    idx = [i for i, la in enumerate(chain) if la.get("class_name") in _LIQUID]
    if len(idx) != 1:
        names = [la.get("config", {}).get("name") for i, la in enumerate(chain) if i in idx]
        raise CheckpointError(
            f"{config_source}: {len(idx) or 'no'} ncps LTC/CfC layers found {names or ''}; "
            "exactly one is exported"
        )
    i = idx[0]
    layer = chain[i]
    lname = layer.get("config", {}).get("name", layer.get("class_name"))
    where = f"{path}: layer {lname!r}"
    ccls, cconf, conf, mixed = _cell_config(layer, where)
    notes = [k for k in ("return_sequences", "stateful", "return_state", "go_backwards") if conf.get(k)]
    if conf.get("go_backwards"):
        raise CheckpointError(
            f"{where}: go_backwards=True runs the sequence reversed; export a forward layer"
        )
    g = _group(h5, layer, where)
    if "cell" not in g:
        raise CheckpointError(f"{where}: the weights file has no cell group for the layer")
    cg = mg = g["cell"]
    if mixed:
        if "rnn_cell" not in mg:
            raise CheckpointError(f"{where}: the weights file has no cell/rnn_cell group (mixed memory)")
        cg = mg["rnn_cell"]
    if ccls == "LTCCell":
        model = _ltc(cconf, conf, cg, where, ncp_seed)
    else:
        model = _cfc(ccls, cconf, cg, where, ncp_seed)
    if mixed:
        _mixed_memory(model, mg, where)
    folded = []
    pre = [la for la in chain[:i] if la.get("class_name") not in _NOOP]
    post = [la for la in chain[i + 1 :] if la.get("class_name") not in _NOOP]
    scale, offset = np.ones(model.config.n_inputs), np.zeros(model.config.n_inputs)
    for la in pre:
        s, o = _affine_in(la, h5, path, model.config.n_inputs)
        scale, offset = scale * s, offset * s + o
        folded.append(f"{la['class_name']}:{la['config'].get('name')}")
    if pre:
        _fold_inputs(model, scale, offset)
    if len(post) > 1:
        raise CheckpointError(
            f"{path}: layer {_name(post[1])!r} ({post[1].get('class_name')}) after the head is not exported"
        )
    for la in post:
        _fold_dense(model, la, h5, path)
        folded.append(f"{la['class_name']}:{_name(la)}")
    model.info["source_kind"] = f"keras:{layer.get('class_name')}"
    if folded:
        model.info["keras_folded"] = ",".join(folded)
    if notes:
        model.info["keras_ignored"] = ",".join(notes)
    model.source = path
    return model


def _name(la: dict) -> str:
    return str(la.get("config", {}).get("name", la.get("class_name")))


def _int(d: dict, key: str, where: str, least: int = 0, limit: int = 1 << 20) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not least <= v <= limit:
        raise CheckpointError(f"{where}: {key} must be an integer in {least}..{limit}, got {str(v)[:20]}")
    return v


def _ltc(cconf: dict, conf: dict, cg, where: str, ncp_seed: Mapping[str, Any] | None = None) -> LTCModel:
    in_map, out_map = cconf.get("input_mapping", "affine"), cconf.get("output_mapping", "affine")
    for k, m in (("input_mapping", in_map), ("output_mapping", out_map)):
        if m not in ("affine", "linear", None, "none"):
            raise CheckpointError(f"{where}: {k} {str(m)[:20]!r} is not affine, linear or none")
    in_map, out_map = in_map or "none", out_map or "none"
    n_vars = 11 + (in_map != "none") + (in_map == "affine") + (out_map != "none") + (out_map == "affine")
    v = _vars(cg, f"{where} cell", n_vars)
    n_in = v[7].shape[0] if v[7].ndim == 2 else 0
    if not 1 <= n_in <= LIMITS["n_inputs"]:
        raise CheckpointError(
            f"{where}: sensory_sigma has shape {list(v[7].shape)}; expected [n_inputs, units]"
        )
    serialized = conf.get("units") if isinstance(conf.get("units"), dict) else cconf.get("wiring")
    cls, wiring = _wiring(serialized, n_in, where, ncp_seed)
    u, m = int(wiring.units), int(wiring.output_dim)
    names = [
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
    ]
    shapes = [(u,)] * 3 + [(u, u)] * 4 + [(n_in, u)] * 4
    if in_map != "none":
        names.append("input_w"), shapes.append((n_in,))
    if in_map == "affine":
        names.append("input_b"), shapes.append((n_in,))
    if out_map != "none":
        names.append("output_w"), shapes.append((m,))
    if out_map == "affine":
        names.append("output_b"), shapes.append((m,))
    params = {n: _shape(a, s, f"{where} {n}") for n, a, s in zip(names, v, shapes, strict=True)}
    params["sparsity_mask"] = np.abs(np.asarray(wiring.adjacency_matrix, np.float64))
    params["sensory_sparsity_mask"] = np.abs(np.asarray(wiring.sensory_adjacency_matrix, np.float64))
    if cls == "NCP":
        _check_erev_zeros(params, where)
    cfg = CellConfig(
        n_inputs=n_in,
        units=u,
        motor_size=m,
        ode_unfolds=_int(cconf, "ode_unfolds", where, 1, LIMITS["ode_unfolds"]),
        epsilon=float(cconf.get("epsilon", 1e-8)),
        positivity="none",  # Keras NonNeg constraints: the stored values are the ones used
        input_mapping=in_map,
        output_mapping=out_map,
    )
    roles = [str(wiring.get_type_of_neuron(n)) for n in range(u)]
    return LTCModel(cfg, params, roles=roles, info={"wiring": cls})


def _check_erev_zeros(params: dict[str, np.ndarray], where: str) -> None:
    """The one wrong-seed evidence an LTC file holds: ncps.keras starts erev at the wiring's
    polarities (0 off the synapses) and the masked entries get no gradient, so a trained model
    keeps erev exactly 0 off its synapses; a rebuilt synapse on such a 0 means another wiring."""
    hits = sum(
        int(np.count_nonzero((params[m] != 0) & (params[e] == 0)))
        for e, m in (("erev", "sparsity_mask"), ("sensory_erev", "sensory_sparsity_mask"))
    )
    if hits:
        raise CheckpointError(
            f"{where}: {hits} synapses of the NCP rebuilt from the given seed have erev exactly 0, where "
            "ncps.keras leaves the entries off its synapses: the seed is not the one the model was built with"
        )


def _activation(value: Any, where: str) -> str:
    name = value
    if isinstance(value, dict):
        name = value.get("config")
        if isinstance(name, dict):
            name = name.get("name")
    if isinstance(name, str):
        name = name.lstrip(">").rsplit(".", 1)[-1]
    if name == "gelu":
        return "gelu"  # keras.activations.gelu's default is the exact erf form, as torch's
    if name not in _ACTIVATIONS:
        raise CheckpointError(
            f"{where}: backbone activation {str(name)[:40]!r} is not one of "
            f"{', '.join(sorted(set(_ACTIVATIONS)))}, gelu"
        )
    return _ACTIVATIONS[name]


def _heads(cg, prefix: str, mode: str, n: int, head_in: int, where: str, mask=None) -> dict[str, np.ndarray]:
    """One keras CfCCell's heads under edgeliquid names (kernels transposed to [out, in]).

    ``mask`` is the cell's Keras ``sparsity_mask`` ``[head_in, n]``: ncps.keras multiplies the
    ff1/ff2 kernels by it as it is (a wiring's ±1 polarities, or any values a user gave); the
    product is stored, and the file's 0/1 mask marks its non-zero entries."""
    v = _vars(cg, f"{where} {cg.name}", 4)
    kern = [_shape(v[0], (head_in, n), f"{where} ff1 kernel"), None]
    p = {f"{prefix}ff1.bias": _shape(v[1], (n,), f"{where} ff1 bias")}
    if mode == "pure":
        p[f"{prefix}w_tau"] = _shape(v[2], (1, n), f"{where} w_tau")
        p[f"{prefix}A"] = _shape(v[3], (1, n), f"{where} A")
    else:
        kern[1] = _shape(v[2], (head_in, n), f"{where} ff2 kernel")
        p[f"{prefix}ff2.bias"] = _shape(v[3], (n,), f"{where} ff2 bias")
        for t in ("time_a", "time_b"):
            if t not in cg:
                raise CheckpointError(f"{where}: {cg.name}/{t} is missing (mode {mode})")
            tw, tb = _vars(cg[t], f"{where} {t}", 2)
            p[f"{prefix}{t}.weight"] = _shape(tw, (head_in, n), f"{where} {t} kernel").T.copy()
            p[f"{prefix}{t}.bias"] = _shape(tb, (n,), f"{where} {t} bias")
    for head, k in zip(("ff1", "ff2"), kern, strict=True):
        if k is not None:
            # float32 kernel * float32 mask is exact in float64: the stored float32 is Keras' product.
            p[f"{prefix}{head}.weight"] = (k * (mask if mask is not None else 1.0)).T.copy()
    if mask is not None:
        p[f"{prefix}sparsity_mask"] = (mask != 0).astype(np.float64).T.copy()
    return p


def _cfc(ccls: str, cconf: dict, cg, where: str, ncp_seed: Mapping[str, Any] | None = None) -> CfCModel:
    mode = cconf.get("mode", "default")
    if mode not in ("default", "no_gate", "pure"):
        raise CheckpointError(f"{where}: mode {str(mode)[:20]!r} is not default, no_gate or pure")
    act = _activation(cconf.get("activation", "lecun_tanh"), where)
    if ccls == "WiredCfCCell":
        if cconf.get("fully_recurrent", True) is not True:
            raise CheckpointError(
                f"{where}: fully_recurrent=False is not exported (ncps.keras cannot build it)"
            )
        subs = cg.get("_cfc_layers")
        if subs is None:
            raise CheckpointError(f"{where}: the weights file has no _cfc_layers group for the wired cell")
        order = sorted(subs, key=lambda k: int(k.rsplit("_", 1)[1]) if k.rsplit("_", 1)[1].isdigit() else 0)
        first = _vars(subs[order[0]], f"{where} {order[0]}")
        n0 = first[1].shape[0] if len(first) > 1 and first[1].ndim == 1 else 0
        n_in = first[0].shape[0] - n0 if first and first[0].ndim == 2 else 0
        if not 1 <= n_in <= LIMITS["n_inputs"]:
            raise CheckpointError(f"{where}: cannot read the input size from the first sub-cell's ff1 kernel")
        cls, wiring = _wiring(cconf.get("wiring"), n_in, where, ncp_seed)
        if wiring.num_layers != len(order):
            raise CheckpointError(
                f"{where}: the wiring has {wiring.num_layers} layers, the weights {len(order)}"
            )
        params, sizes, prev = {}, [], None
        for li, key in enumerate(order):
            neurons = wiring.get_neurons_of_layer(li)
            if li == 0:
                inp = wiring.sensory_adjacency_matrix[:, neurons]
            else:
                inp = wiring.adjacency_matrix[:, neurons][prev, :]
            signed = np.concatenate([inp, np.ones((len(neurons), len(neurons)))], axis=0).astype(np.float64)
            params.update(
                _heads(subs[key], f"layer_{li}.", mode, len(neurons), signed.shape[0], where, signed)
            )
            sizes.append(len(neurons))
            prev = neurons
        cfg = CfCConfig(
            n_inputs=n_in,
            units=sum(sizes),
            mode=mode,
            activation=act,
            backbone_units=0,
            backbone_layers=0,
            layer_sizes=tuple(sizes),
            formulation="keras",
        )
        motors = int(wiring.output_dim)
        if motors != sizes[-1]:
            # ncps.keras outputs the first output_dim units of the last layer: a selecting fc.
            cfg = cfg.replace(proj_size=motors)
            params["fc.weight"] = np.eye(sizes[-1])[:motors]
            params["fc.bias"] = np.zeros(motors)
        return CfCModel(cfg, params, info={"wiring": cls})
    units = _int(cconf, "units", where, 1, LIMITS["units"])
    layers = _int(cconf, "backbone_layers", where, 0, LIMITS["backbone_layers"])
    sparse = cconf.get("sparsity_mask") is not None
    if sparse and layers:
        raise CheckpointError(
            f"{where}: a CfCCell sparsity_mask with backbone_layers={layers}; ncps.keras allows a mask only "
            "without a backbone"
        )
    bu = _int(cconf, "backbone_units", where, 0, LIMITS["backbone_units"]) if layers else 0
    params = {}
    n_in = None
    if layers:
        bb = cg.get("backbone_fn")
        groups = {} if bb is None or "layers" not in bb else dict(bb["layers"].items())
        dense = {}
        for grp in groups.values():
            nm = grp["vars"].attrs.get("name") if "vars" in grp else None
            if isinstance(nm, str) and nm.startswith("backbone") and nm[8:].isdigit():
                dense[int(nm[8:])] = grp
        if sorted(dense) != list(range(layers)):
            raise CheckpointError(
                f"{where}: backbone Dense layers {sorted(dense)} do not match backbone_layers={layers}"
            )
        for k in range(layers):
            kw, kb = _vars(dense[k], f"{where} backbone{k}", 2)
            if k == 0:
                n_in = kw.shape[0] - units if kw.ndim == 2 else 0
                if not 1 <= n_in <= LIMITS["n_inputs"]:
                    raise CheckpointError(f"{where}: backbone0 kernel shape {list(kw.shape)} gives no inputs")
            params[f"backbone.{k}.weight"] = _shape(
                kw, (n_in + units if k == 0 else bu, bu), f"{where} backbone{k}"
            ).T.copy()
            params[f"backbone.{k}.bias"] = _shape(kb, (bu,), f"{where} backbone{k} bias")
        head_in = bu
    else:
        v0 = _vars(cg, f"{where} cell")
        n_in = v0[0].shape[0] - units if v0 and v0[0].ndim == 2 else 0
        if not 1 <= n_in <= LIMITS["n_inputs"]:
            raise CheckpointError(f"{where}: ff1 kernel shape gives no inputs for units={units}")
        head_in = n_in + units
    mask = None
    if sparse:
        mask = _config_array(cconf["sparsity_mask"], (head_in, units), f"{where} sparsity_mask")
    params.update(_heads(cg, "", mode, units, head_in, where, mask))
    cfg = CfCConfig(
        n_inputs=n_in,
        units=units,
        mode=mode,
        activation=act,
        backbone_units=bu,
        backbone_layers=layers,
        sparse=sparse,
        formulation="keras",
    )
    return CfCModel(cfg, params)


def _config_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """An array Keras wrote into config.json (``{"class_name": "__numpy__"|"__tensor__", "config":
    {"value": [...]}}``, or a bare nested list), of ``shape``, finite."""
    if isinstance(value, dict) and value.get("class_name") in ("__numpy__", "__tensor__"):
        value = value.get("config", {}).get("value") if isinstance(value.get("config"), dict) else None
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: not an array of numbers") from None
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise CheckpointError(f"{where}: shape {list(a.shape)}, expected {list(shape)} finite values")
    return a


# ------------------------------------------------------------------------ folding


def _per_channel(value: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64).ravel()
    if a.size == 1:
        a = np.full(n, a[0])
    if a.size != n or not np.all(np.isfinite(a)):
        raise CheckpointError(f"{what}: expected a number or {n} per-channel values")
    return a


def _affine_in(la: dict, h5, path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) of an input layer computing x * scale + offset, or a refusal naming it."""
    cls, conf = la.get("class_name"), la.get("config", {})
    what = f"{path}: layer {_name(la)!r} ({cls})"
    if cls == "Rescaling":
        try:
            return _per_channel(conf.get("scale", 1.0), n, what), _per_channel(
                conf.get("offset", 0.0), n, what
            )
        except (TypeError, ValueError):
            raise CheckpointError(f"{what}: scale/offset are not numbers") from None
    if cls == "Normalization":
        if conf.get("invert") or conf.get("axis") not in (-1, [-1], None):
            raise CheckpointError(f"{what}: only axis=-1, invert=False is folded")
        if conf.get("mean") is not None:
            mean, var = conf.get("mean"), conf.get("variance")
        else:
            v = _vars(_group(h5, la, what), what, 3)
            mean, var = v[0], v[1]
        try:
            mean, var = _per_channel(mean, n, what), _per_channel(var, n, what)
        except (TypeError, ValueError):
            raise CheckpointError(f"{what}: mean/variance are not numbers") from None
        s = 1.0 / np.maximum(np.sqrt(var), 1e-7)  # keras: (x - mean) / max(sqrt(var), epsilon)
        return s, -mean * s
    raise CheckpointError(
        f"{what} before the liquid layer is not exported; only Rescaling, Normalization, Dropout are folded"
    )


def _fold_inputs(model: LTCModel | CfCModel, s: np.ndarray, o: np.ndarray) -> None:
    """Make the model take raw x where it took x * s + o."""
    p, cfg = model.params, model.config
    if cfg.mixed_memory:  # ncps.keras mixed memory: x reaches only the LSTM's input_kernel
        w = p["lstm.input_map.weight"]
        p["lstm.input_map.bias"] = p["lstm.input_map.bias"] + w @ o
        p["lstm.input_map.weight"] = w * s
        return
    if isinstance(model, LTCModel):
        w = p.get("input_w", np.ones(cfg.n_inputs))
        b = p.get("input_b", np.zeros(cfg.n_inputs))
        p["input_w"], p["input_b"] = s * w, o * w + b
        model.config = cfg.replace(input_mapping="affine")
        return
    if not cfg.wired and cfg.backbone_layers:
        targets = [("backbone.0", None)]
    else:
        prefix = cfg.layers()[0][0]
        mask = p.get(f"{prefix}sparsity_mask")
        heads = ("ff1",) if cfg.mode == "pure" else ("ff1", "ff2", "time_a", "time_b")
        targets = [(f"{prefix}{h}", mask if h in ("ff1", "ff2") else None) for h in heads]
    n = cfg.n_inputs
    for name, mask in targets:
        w = p[f"{name}.weight"]
        wm = w * mask if mask is not None else w
        p[f"{name}.bias"] = p[f"{name}.bias"] + wm[:, :n] @ o
        w = w.copy()
        w[:, :n] = w[:, :n] * s
        p[f"{name}.weight"] = w


def _fold_dense(model: LTCModel | CfCModel, la: dict, h5, path: str) -> None:
    cls, conf = la.get("class_name"), la.get("config", {})
    what = f"{path}: layer {_name(la)!r} ({cls})"
    if cls != "Dense":
        raise CheckpointError(
            f"{what} after the liquid layer is not exported; only one linear Dense head is folded"
        )
    if conf.get("activation") not in ("linear", None):
        raise CheckpointError(
            f"{what}: activation {str(conf.get('activation'))[:30]!r}; only a linear Dense head is folded"
        )
    v = _vars(_group(h5, la, what), what, (1, 2) if not conf.get("use_bias", True) else 2)
    kernel = v[0]
    m = model.config.n_outputs
    if kernel.ndim != 2 or kernel.shape[0] != m:
        raise CheckpointError(f"{what}: kernel shape {list(kernel.shape)}; expected [{m}, units]")
    bias = v[1] if len(v) > 1 else np.zeros(kernel.shape[1])
    bias = _shape(bias, (kernel.shape[1],), f"{what} bias")
    p, cfg = model.params, model.config
    if isinstance(model, LTCModel):
        if kernel.shape[1] != m or np.any(kernel[~np.eye(m, dtype=bool)] != 0):
            raise CheckpointError(
                f"{what}: a {kernel.shape[0]}x{kernel.shape[1]} Dense mixes the motor outputs; an LTC file's "
                "output mapping is per channel, so only a diagonal Dense is folded"
            )
        d = np.diag(kernel).copy()
        w = p.get("output_w", np.ones(m))
        b = p.get("output_b", np.zeros(m))
        p["output_w"], p["output_b"] = w * d, b * d + bias
        model.config = cfg.replace(output_mapping="affine")
        return
    if kernel.shape[1] > LIMITS["units"]:
        raise CheckpointError(f"{what}: {kernel.shape[1]} outputs exceed the limit {LIMITS['units']}")
    if cfg.proj_size:  # compose with the selecting fc
        p["fc.weight"], p["fc.bias"] = kernel.T @ p["fc.weight"], kernel.T @ p["fc.bias"] + bias
    else:
        p["fc.weight"], p["fc.bias"] = kernel.T.copy(), bias
    model.config = cfg.replace(proj_size=int(kernel.shape[1]))


# --------------------------------------------------------------------------- spec


_SPEC_KEYS = {
    "class_name": str,
    "layer": str,
    "units": int,
    "wiring": dict,
    "mode": str,
    "activation": str,
    "backbone_units": int,
    "backbone_layers": int,
    "input_mapping": str,
    "output_mapping": str,
    "ode_unfolds": int,
    "epsilon": float,
    "mixed_memory": bool,
    "forget_gate_bias": float,
}


def _layer_from_spec(spec: Mapping[str, Any], where: str) -> dict:
    """A layer config like config.json's from a weights-file spec (docs/export.md, Keras)."""
    for k, v in spec.items():
        if k not in _SPEC_KEYS:
            raise CheckpointError(
                f"{where}: unknown key {k!r} for a Keras weights file; allowed: {', '.join(_SPEC_KEYS)}"
            )
        kind = _SPEC_KEYS[k]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else isinstance(v, kind)
        if not ok or (kind is int and isinstance(v, bool)):
            raise CheckpointError(f"{where}: {k} must be a {kind.__name__}, got {str(v)[:30]!r}")
    cls = spec.get("class_name")
    if cls not in ("LTC", "CfC"):
        raise CheckpointError(f"{where}: class_name: LTC or CfC is required for a Keras weights file")
    if "forget_gate_bias" in spec and not spec.get("mixed_memory"):
        raise CheckpointError(f"{where}: forget_gate_bias is a MixedMemoryRNN's; it needs mixed_memory: true")
    if cls == "LTC":
        missing = [
            k
            for k in ("wiring", "ode_unfolds", "epsilon", "input_mapping", "output_mapping")
            if k not in spec
        ]
        cell = {"class_name": "LTCCell", "config": {k: spec[k] for k in spec if k != "class_name"}}
        conf = {"units": spec.get("wiring")}
    else:
        wired = "wiring" in spec
        need = ["mode"] + ([] if wired else ["units", "backbone_layers"])
        if not wired and spec.get("backbone_layers"):
            need += ["backbone_units", "activation"]
        missing = [k for k in need if k not in spec]
        cconf = {k: spec[k] for k in spec if k not in ("class_name", "layer")}
        cell = {"class_name": "WiredCfCCell" if wired else "CfCCell", "config": cconf}
        conf = {}
    if missing:
        raise CheckpointError(
            f"{where}: a Keras weights file does not record {', '.join(missing)}; state "
            f"{'it' if len(missing) == 1 else 'them'} in the spec (docs/export.md, Keras)"
        )
    if spec.get("mixed_memory"):  # ncps.keras wraps the cell; the weights file does not say its bias
        mm = {"rnn_cell": cell, "forget_gate_bias": spec.get("forget_gate_bias", 1.0)}
        cell = {"class_name": "MixedMemoryRNN", "config": mm}
    layer = {"class_name": cls, "config": {"name": spec.get("layer", ""), "cell": cell, **conf}}
    if "layer" in spec:
        layer["_h5_group"] = spec["layer"]
    else:
        layer["_h5_group"] = "cf_c" if cls == "CfC" else "ltc"
    return layer


def looks_like_keras(path: str) -> bool:
    """A ``.keras`` zip (config.json + model.weights.h5) or an HDF5 weights file, by content."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89HDF"):
            return True
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
            # a .keras name with a member missing still goes to the Keras reader, which names it
            return path.endswith(".keras") or ("config.json" in names and "model.weights.h5" in names)
    except (OSError, zipfile.BadZipFile, ValueError):
        return path.endswith(".keras")
    return False


__all__ = ["read_keras", "looks_like_keras", "cfc_expected_shapes"]
