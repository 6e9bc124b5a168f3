"""The ``--spec`` file of a state_dict export: its keys, their types, ncps' defaults.

A ``state_dict`` holds an LTC's or CfC's weights but not every constructor argument.
The ones the weights cannot tell (:data:`REQUIRED` for LTC; for CfC ``mode`` unless the
weights are pure-mode, and the activation when there is a backbone) must be stated in
the spec, or assumed explicitly (``--assume-defaults``); the rest are read from which
keys are present and, when the spec states them too, checked against the weights.
Every key is documented in docs/export.md.
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError

DOCS = "docs/export.md"
#: A spec is a handful of lines; anything bigger is the wrong file (or an attack on the parser).
MAX_SPEC_BYTES = 64 * 1024
MAPPINGS = ("affine", "linear", "none")
CELLS = ("ltc", "cfc")
CFC_MODES = ("default", "no_gate", "pure")
CFC_ACTIVATIONS = ("lecun_tanh", "silu", "relu", "tanh", "gelu")


@dataclass(frozen=True)
class SpecKey:
    """One spec key: how its value is checked and what ncps does without it."""

    kind: str  # "int", "int0", "number", "fraction", "bool", "mapping", "names", "cell", "mode", "activation"
    ncps: str  # where ncps takes the value
    default_ltc: Any = None  # ncps.torch.LTC's default (None: no default)
    default_cell: Any = None  # ncps.torch.LTCCell's default
    cells: tuple[str, ...] = ("ltc",)  # the cells whose spec may hold the key
    default_cfc: Any = None  # ncps.torch.CfC's (and CfCCell's) default


KEYS: dict[str, SpecKey] = {
    "ode_unfolds": SpecKey("int", "LTC / LTCCell(ode_unfolds=)", 6, 6),
    "epsilon": SpecKey("number", "LTC / LTCCell(epsilon=)", 1e-8, 1e-8),
    "implicit_param_constraints": SpecKey("bool", "LTC / LTCCell(implicit_param_constraints=)", True, False),
    "input_mapping": SpecKey("mapping", "LTC / LTCCell(input_mapping=)", "affine", "affine"),
    "output_mapping": SpecKey("mapping", "LTC / LTCCell(output_mapping=)", "affine", "affine"),
    "mixed_memory": SpecKey("bool", "LTC / CfC(mixed_memory=)", False, False, CELLS, False),
    "motor_neurons": SpecKey("int", "the wiring's output_dim"),
    "input_names": SpecKey("names", "edgeliquid metadata", cells=CELLS),
    "output_names": SpecKey("names", "edgeliquid metadata", cells=CELLS),
    "cell": SpecKey("cell", "the class: LTC/LTCCell or CfC/CfCCell/WiredCfCCell", cells=CELLS),
    "mode": SpecKey("mode", "CfC / CfCCell / WiredCfCCell(mode=)", cells=("cfc",), default_cfc="default"),
    "activation": SpecKey("activation", "CfC(activation=)", cells=("cfc",), default_cfc="lecun_tanh"),
    "backbone_activation": SpecKey(
        "activation", "CfCCell(backbone_activation=)", cells=("cfc",), default_cfc="lecun_tanh"
    ),
    "backbone_units": SpecKey("int", "CfC / CfCCell(backbone_units=)", cells=("cfc",), default_cfc=128),
    "backbone_layers": SpecKey("int0", "CfC / CfCCell(backbone_layers=)", cells=("cfc",), default_cfc=1),
    "backbone_dropout": SpecKey(
        "fraction", "CfC / CfCCell(backbone_dropout=)", cells=("cfc",), default_cfc=0.0
    ),
    "proj_size": SpecKey("int0", "CfC(proj_size=) (0: None)", cells=("cfc",), default_cfc=0),
}

#: Keys a spec may hold.
SPEC_KEYS = tuple(KEYS)
#: Hyperparameters a state_dict does not record: stated, or assumed on request, never guessed.
REQUIRED = ("ode_unfolds", "epsilon", "implicit_param_constraints")


class AssumedDefaultWarning(UserWarning):
    """Issued for each hyperparameter ``--assume-defaults`` filled in with ncps' default."""


def yaml_value(value: Any) -> str:
    """``value`` as it would be written in a spec file (``true``, ``1.0e-08``, ``6``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        # PyYAML (YAML 1.1) reads 1e-08 as a string; a mantissa with a dot is a float.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    return str(value)


# ----------------------------------------------------------------------------- checking


def _kind_text(kind: str) -> str:
    return {
        "int": "an integer >= 1",
        "int0": "an integer >= 0",
        "number": "a finite number >= 0",
        "fraction": "a number >= 0 and < 1",
        "bool": "true or false",
        "mapping": "one of " + ", ".join(MAPPINGS),
        "names": "a YAML list of names, e.g. [pos, vel, acc]",
        "cell": "one of " + ", ".join(CELLS),
        "mode": "one of " + ", ".join(CFC_MODES),
        "activation": "one of " + ", ".join(CFC_ACTIVATIONS),
    }[kind]


def _value_ok(kind: str, v: Any) -> bool:
    is_num = isinstance(v, int | float) and not isinstance(v, bool)
    if kind in ("int", "int0"):
        return isinstance(v, int) and not isinstance(v, bool) and v >= (1 if kind == "int" else 0)
    if kind == "number":
        return is_num and math.isfinite(v) and v >= 0
    if kind == "fraction":
        return is_num and 0 <= v < 1
    if kind == "bool":
        return isinstance(v, bool)
    if kind in ("mapping", "cell", "mode", "activation"):
        choices = {"mapping": MAPPINGS, "cell": CELLS, "mode": CFC_MODES, "activation": CFC_ACTIVATIONS}
        return isinstance(v, str) and v in choices[kind]
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


def _hint(kind: str, v: Any) -> str:
    if kind == "names" and isinstance(v, str):
        return f"; a string is not a list: write [{', '.join(p.strip() for p in v.split(','))}]"
    if kind == "number" and isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return ""
        return "; YAML 1.1 reads an exponent without a dot as a string: write e.g. 1.0e-8"
    return ""


def validate_spec(spec: Any, source: str = "<spec>") -> dict[str, Any]:
    """Check every key and the type of every value; returns a plain dict.

    Raises:
        CheckpointError: naming ``source`` and the key, for an unknown key or a bad value.
    """
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise CheckpointError(
            f"{source}: a spec is a mapping of ncps constructor names to values, "
            f"got {type(spec).__name__}; see {DOCS}"
        )
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in KEYS:
            near = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
            maybe = f" (did you mean {near[0]!r}?)" if near else ""
            raise CheckpointError(
                f"{source}: unknown spec key {key!r}{maybe}; allowed: {', '.join(SPEC_KEYS)}; see {DOCS}"
            )
        kind = KEYS[key].kind
        if not _value_ok(kind, value):
            raise CheckpointError(
                f"{source}: {key} must be {_kind_text(kind)}, got {value!r} "
                f"({type(value).__name__}){_hint(kind, value)}; see {DOCS}"
            )
        if kind == "names":
            _check_names(key, value, source)
        out[key] = list(value) if kind == "names" else value
    return out


def _check_names(key: str, names: list[str], source: str) -> None:
    for n in names:
        # Names are stored comma-separated in the model file's metadata.
        if not n.strip() or "," in n or n != n.strip():
            raise CheckpointError(
                f"{source}: {key}: {n!r} is not a name (empty, a comma, or surrounding spaces); see {DOCS}"
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CheckpointError(f"{source}: {key}: names repeat {dup}")


_CELL_NAMES = {"ltc": "LTC", "cfc": "CfC"}


def check_cell_keys(spec: Mapping[str, Any], cell: str, source: str, what: str) -> None:
    """Refuse spec keys of the other cell (e.g. ``ode_unfolds`` for a CfC) and a wrong ``cell:``."""
    if spec.get("cell", cell) != cell:
        raise CheckpointError(
            f"{source}: cell: {spec['cell']} but {what} is an ncps {_CELL_NAMES[cell]}; see {DOCS}"
        )
    other = [k for k in spec if cell not in KEYS[k].cells]
    if other:
        raise CheckpointError(
            f"{source}: {', '.join(other)} {'is not a key' if len(other) == 1 else 'are not keys'} of "
            f"an ncps {_CELL_NAMES[cell]}, and {what} is one; allowed: "
            f"{', '.join(k for k in SPEC_KEYS if cell in KEYS[k].cells)}; see {DOCS}"
        )


def check_names_count(spec: Mapping[str, Any], n_inputs: int, n_outputs: int, source: str, what: str):
    """The ``input_names``/``output_names`` of ``spec`` must name every input/output of ``what``."""
    for key, want in (("input_names", n_inputs), ("output_names", n_outputs)):
        if key in spec and len(spec[key]) != want:
            side = key.split("_")[0] + "s"
            raise CheckpointError(
                f"{source}: {key} has {len(spec[key])} names but {what} has {want} {side}; see {DOCS}"
            )


def ncps_default(key: str, cls: str) -> Any:
    """ncps class ``cls``'s default for spec key ``key``."""
    k = KEYS[key]
    if cls.startswith(("CfC", "WiredCfC")):
        return k.default_cfc
    return k.default_ltc if cls == "LTC" else k.default_cell


def resolve_required(
    spec: Mapping[str, Any],
    cls: str,
    source: str,
    spec_source: str | None,
    assume_defaults: bool,
    required: tuple[str, ...] = REQUIRED,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``required`` hyperparameters: stated in ``spec``, or ncps ``cls``'s defaults on request.

    Returns:
        ``(values, assumed)``: every required key's value, and those of them that were assumed.

    Raises:
        CheckpointError: listing the missing keys and ncps' defaults, when some are
            missing and ``assume_defaults`` is false.
    """
    missing = [k for k in required if k not in spec]
    defaults = {k: ncps_default(k, cls) for k in missing}
    if missing and not assume_defaults:
        where = f"in {spec_source}" if spec_source else "with --spec FILE.yaml"
        listed = ", ".join(f"{k}: {yaml_value(v)}" for k, v in defaults.items())
        raise CheckpointError(
            f"{source}: a state_dict does not record {', '.join(missing)}; "
            f"state {'it' if len(missing) == 1 else 'them'} {where} "
            f"(ncps {cls} default{'s' if len(missing) > 1 else ''}: {listed}) "
            f"or pass --assume-defaults; see {DOCS}"
        )
    for k, v in defaults.items():
        warnings.warn(
            AssumedDefaultWarning(
                f"{source}: assumed {k}: {yaml_value(v)} (ncps {cls} default; the state_dict does not "
                "record it, and a wrong value changes every output)"
            ),
            stacklevel=3,
        )
    return {**{k: spec[k] for k in required if k in spec}, **defaults}, defaults


# ------------------------------------------------------------------------------ loading


def load_spec(path: str | os.PathLike, validate: bool = True) -> dict[str, Any]:
    """Read and validate a spec YAML file (at most :data:`MAX_SPEC_BYTES`, no aliases).

    ``validate=False`` returns the mapping unchecked, for readers with their own keys (Keras)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read spec ({exc.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise CheckpointError(f"{path}: spec larger than {MAX_SPEC_BYTES // 1024} KiB; is it the right file?")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - safe loader subclass
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: spec is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    except _AliasFound as exc:
        raise CheckpointError(f"{path}: {exc}; write values out instead of anchors/aliases") from None
    if not validate:
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: a spec is a YAML mapping of names to values; see {DOCS}")
        return data
    return validate_spec(data, str(path))


class _AliasFound(Exception):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (``*name``): they let a tiny file expand without bound."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _AliasFound(f"YAML alias at line {mark.line + 1}, column {mark.column + 1}")
        return super().compose_node(parent, index)
