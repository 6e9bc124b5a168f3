"""What the model file says about its inputs and outputs: names, units, input normalisation.

The model was trained on ``x = (raw - offset) * scale`` when its metadata holds
``input_normalization`` (docs/model-format.md); the generated header says so, the manifest
records it and ``NAME_normalize`` computes it. Names (``input_names``/``output_names``) and
units (``input_units``/``output_units``, comma-separated, optional) only go into comments
and the manifest; a count that disagrees with the model's sizes is an error, not a guess.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from string import Template

from .cgen import CodegenError, c_array, show

# Characters allowed in C comments: a name cannot end the comment ("*/"), form a trigraph
# ("??/") or smuggle a newline; anything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:;()\[\]+\-^%#=<>|~*/]")
_COMMENT_MARK = re.compile(r"\*/|/\*")
MAX_LABEL = 40


@dataclass(frozen=True)
class Channels:
    """Per-channel facts from the model's metadata (``None`` where the file says nothing)."""

    n_inputs: int
    n_outputs: int
    input_names: list[str] | None
    input_units: list[str] | None
    output_names: list[str] | None
    output_units: list[str] | None
    offset: list[float] | None
    scale: list[float] | None

    @property
    def normalized(self) -> bool:
        return self.offset is not None

    def manifest(self, name: str) -> dict:
        """``inputs``, ``outputs`` and ``input_normalization`` entries for manifest.json."""

        def chans(names, units, n, extra=None):
            return [
                {
                    "index": i,
                    "name": names[i] if names else None,
                    "unit": units[i] if units else None,
                    **(extra(i) if extra else {}),
                }
                for i in range(n)
            ]

        norm = None
        if self.normalized:
            norm = lambda i: {"offset": self.offset[i], "scale": self.scale[i]}  # noqa: E731
        return {
            "inputs": chans(self.input_names, self.input_units, self.n_inputs, norm),
            "outputs": chans(self.output_names, self.output_units, self.n_outputs),
            "input_normalization": None
            if not self.normalized
            else {
                "formula": "x = (raw - offset) * scale",
                "offset": self.offset,
                "scale": self.scale,
                "function": f"{name}_normalize",
            },
        }


def channels_of(model) -> Channels:
    """Read and check the channel metadata of ``model``; raises :class:`CodegenError`."""
    cfg, info, src = model.config, model.info, model.source
    names = {
        key: _labels(info, key, n, src)
        for key, n in (
            ("input_names", cfg.n_inputs),
            ("input_units", cfg.n_inputs),
            ("output_names", cfg.n_outputs),
            ("output_units", cfg.n_outputs),
        )
    }
    offset = scale = None
    raw = info.get("input_normalization")
    if raw:
        offset, scale = _normalization(raw, cfg.n_inputs, src)
    return Channels(cfg.n_inputs, cfg.n_outputs, offset=offset, scale=scale, **names)


def _labels(info: dict, key: str, n: int, src: str) -> list[str] | None:
    raw = info.get(key)
    if not raw:
        return None
    parts = [p.strip() for p in str(raw).split(",")]
    if len(parts) != n:
        raise CodegenError(
            f"{src}: metadata edgeliquid.{key} lists {len(parts)} entries for {n} channels ({show(raw)})"
        )
    return parts


def _normalization(raw: str, n: int, src: str) -> tuple[list[float], list[float]]:
    what = f"{src}: metadata edgeliquid.input_normalization"
    try:
        norm = json.loads(raw)
        offset, scale = norm["offset"], norm["scale"]
        offset = [float(v) for v in offset]
        scale = [float(v) for v in scale]
    except (ValueError, KeyError, TypeError, RecursionError):
        want = '{"offset": [...], "scale": [...]}'
        raise CodegenError(f"{what} is not JSON {want} ({show(raw)})") from None
    if len(offset) != n or len(scale) != n:
        raise CodegenError(f"{what} has {len(offset)} offsets and {len(scale)} scales for {n} inputs")
    # float32 is what the C computes with: a value that is not finite there is no normalisation
    if not all(math.isfinite(v) and abs(v) < 3.4e38 for v in offset + scale):
        raise CodegenError(f"{what} holds a value that is not a finite float32")
    return offset, scale


def label(s: str | None) -> str:
    """A name or unit made safe for a C block comment."""
    if s is None:
        return ""
    s = _UNSAFE.sub("_", s)[:MAX_LABEL]
    while _COMMENT_MARK.search(s):  # "*/*" needs two rounds
        s = _COMMENT_MARK.sub(lambda m: m[0][0] + "_" + m[0][1], s)
    return s


def header_doc(ch: Channels, name: str) -> str:
    """The header's comment on what x and y are, channel by channel."""
    up = name.upper()
    lines = []
    if ch.normalized:
        lines += [
            f"/* Inputs x[{up}_N_INPUTS] are NORMALISED, as the model was trained (metadata",
            " * input_normalization): x[i] = (raw[i] - offset[i]) * scale[i].",
            f" * Call {name}_normalize(raw, x) first; do not feed raw sensor values to {name}_step.",
        ]
    else:
        lines += [
            f"/* Inputs x[{up}_N_INPUTS]: exactly what the model saw in training. The model file records",
            " * no input normalisation (metadata input_normalization), so none is applied here.",
        ]
    rows = [_row(f"x[{i}]", ch.input_names, ch.input_units, i) for i in range(ch.n_inputs)]
    if ch.normalized:
        rows = [r + [f"offset {ch.offset[i]:.9g}", f"scale {ch.scale[i]:.9g}"] for i, r in enumerate(rows)]
    lines += _table(rows)
    lines.append(f" * Outputs y[{up}_N_OUTPUTS] (model units; scaling to commands is the caller's):")
    lines += _table([_row(f"y[{k}]", ch.output_names, ch.output_units, k) for k in range(ch.n_outputs)])
    lines.append(" */")
    return "\n".join(lines) + "\n"


def _row(index: str, names, units, i: int) -> list[str]:
    return [index, label(names[i]) if names else "", f"[{label(units[i])}]" if units else ""]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))] if rows else []
    return [" *   " + "  ".join(v.ljust(w) for v, w in zip(r, widths) if w).rstrip() for r in rows]


NORMALIZE_DECL = Template("""
/* x[i] = (raw[i] - offset[i]) * scale[i] in float32, the model's input normalisation.
 * raw and x: ${UP}_N_INPUTS floats each (may be the same array). */
void ${name}_normalize(const float *raw, float *x);
""")

NORMALIZE_Q_DECL = Template("""
/* ${name}_normalize, then the conversion ${name}_step applies: saturate to +-${limit} (the Q
 * format's input range, manifest fixed_point.input_range), round to Q${qi}.${qf}, for ${name}_step_q. */
void ${name}_normalize_q(const float *raw, int32_t *xq);
""")

NORMALIZE_DEF = Template("""
$arrays
void ${name}_normalize(const float *raw, float *x)
{
    int i;
    for (i = 0; i < ${UP}_N_INPUTS; ++i) {
        x[i] = (raw[i] - norm_offset[i]) * norm_scale[i];
    }
}
""")

NORMALIZE_Q_DEF = Template("""
void ${name}_normalize_q(const float *raw, int32_t *xq)
{
    float x[NI];
    int i;
    ${name}_normalize(raw, x);
    for (i = 0; i < NI; ++i) {
        xq[i] = to_q(x[i], X_LIMIT);
    }
}
""")


def normalize_c(
    ch: Channels, name: str, fixed_frac: int | None = None, input_range: float = 10.0
) -> tuple[str, str]:
    """(header declaration, source definition) of NAME_normalize; empty without normalisation."""
    if not ch.normalized:
        return "", ""
    up = name.upper()
    arrays = c_array("float", "norm_offset", ch.offset) + c_array("float", "norm_scale", ch.scale)
    decl = NORMALIZE_DECL.substitute(UP=up, name=name)
    src = NORMALIZE_DEF.substitute(UP=up, name=name, arrays=arrays)
    if fixed_frac is not None:
        decl += NORMALIZE_Q_DECL.substitute(
            name=name, qi=31 - fixed_frac, qf=fixed_frac, limit=f"{input_range:g}"
        )
        src += NORMALIZE_Q_DEF.substitute(name=name)
    return decl, src
