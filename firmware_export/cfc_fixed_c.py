"""The fixed-point variant for CfC models: int32, one Q format per quantity, each from a bound.

Same interface as the other variants (NAME_reset/NAME_step, caller-owned float state, no malloc,
no mutable globals) plus ``NAME_step_q`` on int32 values. Modes ``default`` and ``no_gate``,
unwired (any backbone, every activation) or wired, with ``proj_size``; ``pure``, mixed memory and
an ncps.keras model whose heads' bound does not contract are refused in one line (:func:`check`).

Why every value is bounded (docs/firmware.md, "CfC in fixed point"): inputs are saturated to
``input_range`` and elapsed clamped to [min_elapsed, max_elapsed]; the state is a convex
combination of two tanh values (default: |h| <= 1) or tanh + sigmoid x tanh (no_gate: |h| <= 2),
and the C saturates it there on entry. Interval arithmetic then bounds every Linear
(sum |W| bound + |b|, per row), every activation, the heads and the gate argument
time_a * elapsed + time_b. Each quantity gets F = 30 - ceil(log2(M + 1)) fractional bits for its
bound M (one guard bit); a Linear's weights are stored per input column so that every product lands
in one accumulator format Q(P), summed in int64 (32x32->64, one ``smlal`` on a Cortex-M4), with P
as large as the accumulator bound allows. There is no division anywhere.

Nonlinearities are tables (:func:`table`): tanh, the logistic and the normal CDF (gelu = x Phi(x),
torch's exact GELU) on [0, R] by symmetry, N intervals each, the minimax line on each (Q30,
uint32 pairs as in :mod:`firmware_export.fixed_c`); silu = x sigmoid(x); lecun_tanh's 0.666 and
1.7159 are folded into the weights around a tanh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from string import Template

import numpy as np

from edgeliquid.model.cfc import CfCModel

from .cfc_c import FIXED_POINT_REFUSAL, STEP_DOC, describe
from .cgen import RESET_C, CodegenError, banner, c_array, c_float
from .channels import Channels, channels_of, normalize_c
from .float_c import render_header

#: Fraction bits of a table coordinate within an interval.
UK = 12
#: Fewest fractional bits any quantity may get (below: refused, as fixed_c does).
MIN_FRAC = 8
#: Largest rounding of a gate argument (time_a * elapsed + time_b) accepted: the state's share of
#: it is half (sigmoid' <= 1/4, |tanh(ff2) - tanh(ff1)| <= 2), the documented 1e-3.
GATE_ROUNDING_MAX = 2e-3
LECUN_IN, LECUN_OUT = 0.666, 1.7159
#: Lower bounds of silu and gelu (their minima), so their output bound is max(bound, this).
ACT_FLOOR = {"silu": 0.27846454276, "gelu": 0.16997120378}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_erf = np.frompyfunc(math.erf, 1, 1)


def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


#: name -> (f on [0, R], R, largest slope, N intervals). tanh is odd; the logistic and Phi satisfy
#: f(-x) = 1 - f(x). R is where f is within 2.3e-7 of its limit; N / R is a power of two (a shift,
#: not a multiply). tanh gets 512 intervals (4 KB): its error enters every head and tanh backbone
#: layer and is multiplied by the next layer's weights (measured: 256 gave up to 4.7e-4 of the scale).
TABLES = {
    "tanh": (np.tanh, 8.0, 1.0, 512),
    "sigmoid": (_sigmoid, 16.0, 0.25, 256),
    "phi": (_phi, 8.0, 0.3989422804, 256),
}


def table_shift(kind: str) -> int:
    """K: a value in Q(K) is the table coordinate (UK fraction bits per interval)."""
    _, r, _, n = TABLES[kind]
    return UK + int(round(math.log2(n / r)))


def table_umax(kind: str) -> int:
    """The largest coordinate of a table (the clamp)."""
    return TABLES[kind][3] * 2**UK - 1


@cache
def table(kind: str) -> tuple[np.ndarray, float]:
    """(uint32 [2 N] pairs (c_i, s_i): f(u) = c_i + s_i u mod 2^32 in Q30 for the coordinate u
    in interval i; the worst error against f, sampled at every coordinate, plus the tail beyond R and
    half a coordinate of input rounding times the largest slope)."""
    f, r, slope_max, n = TABLES[kind]
    step = 2**UK
    j = np.arange(step + 1)
    u = np.arange(n)[:, None] * step + j[None, :]
    ys = f(u * (r / n / step))
    slope = (ys[:, -1] - ys[:, 0]) / step
    gap = ys - (ys[:, :1] + slope[:, None] * j[None, :])
    c0 = ys[:, 0] + 0.5 * (gap.max(axis=1) + gap.min(axis=1))  # minimax: the secant shifted by half
    sq = np.round(slope * 2**30).astype(np.int64)
    cq = np.round(c0 * 2**30).astype(np.int64) - sq * np.arange(n) * step
    got = (cq[:, None] + sq[:, None] * u) / 2**30
    err = float(np.abs(got - ys).max())
    tail = abs(1.0 - (cq[-1] + sq[-1] * (n * step - 1)) / 2**30)
    lut = np.empty(2 * n, np.int64)
    lut[0::2], lut[1::2] = cq % 2**32, sq % 2**32
    return lut, max(err, tail) + 0.5 * slope_max * r / n / step


def _ib(m: float) -> int:
    """Integer bits of a magnitude: ceil(log2(m + 1))."""
    return int(math.ceil(math.log2(float(m) + 1.0)))


def _frac(m: float) -> int:
    """F for a bound m: 30 - integer bits (one guard bit: |v| 2^F <= 2^30)."""
    return 30 - _ib(m)


@dataclass
class Linear:
    """One int32 Linear: y_i = (sum_k wq_ik zq_k) >> (P - frac) + bq_i, the sum in int64 Q(P)."""

    key: str
    cname: str
    wq: np.ndarray
    bq: np.ndarray
    p: int
    frac: int
    bound: np.ndarray  # per row, |y_i| <= bound_i

    def call(self, name: str, row: str, src: str) -> str:
        cols = self.wq.shape[1]
        return (
            f"{name}_dot({self.cname}_w + {row} * {cols}, {src}, {cols}, {self.p - self.frac}) "
            f"+ {self.cname}_b[{row}]"
        )

    def arrays(self) -> list[str]:
        return [c_array("int32_t", f"{self.cname}_{k}", v) for k, v in (("w", self.wq), ("b", self.bq))]


class Plan:
    """Every Q format of one model for a state bound ``h_bound`` (per unit), from the bounds.

    ``h_new``: the bound the update gives the new state (<= ``h_bound`` for a valid plan).
    ``strict`` False: bounds only, no refusal (the ncps.keras state-bound iteration).
    """

    def __init__(
        self,
        model: CfCModel,
        h_bound: np.ndarray,
        input_range: float,
        max_elapsed: float,
        strict: bool = True,
    ):
        self.model, self.cfg, self.p = model, model.config, model.params
        self.strict = strict
        self.src = model.source
        self.xr, self.max_e = float(input_range), float(max_elapsed)
        self.h_bound = np.asarray(h_bound, np.float64)
        self.fx = _frac(self.xr)
        self.fh = _frac(self.h_bound.max())
        self.fe = _frac(self.max_e)
        self.frac: dict[str, int] = {"inputs": self.fx, "state": self.fh, "elapsed": self.fe}
        self.bounds: dict[str, float] = {
            "inputs": self.xr,
            "state": float(self.h_bound.max()),
            "elapsed": self.max_e,
        }
        self.acc: dict[str, int] = {}
        self.rounding: dict[str, float] = {}
        self.cells: list[dict] = []
        self.tables: set[str] = {"sigmoid"}
        h_new = []
        for l, (prefix, n_in, n) in enumerate(self.cfg.layers()):
            start = sum(self.cfg.layer_sizes[:l]) if self.cfg.wired else 0
            if l == 0:
                in_b, in_f = np.full(n_in, self.xr), self.fx
            else:
                in_b, in_f = h_new[-1], self.fh
            cell = self._cell(l, prefix, in_b, in_f, self.h_bound[start : start + n])
            self.cells.append(cell)
            h_new.append(cell["h_new"])
        self.h_new = np.concatenate(h_new)
        m = self.cfg.motor_size
        if self.cfg.proj_size:
            self.fc = self._linear(
                "fc",
                "fc",
                p_w=self.p["fc.weight"],
                p_b=self.p["fc.bias"],
                in_b=self.h_bound[-m:],
                in_f=np.full(m, self.fh),
            )
            self.fy = self.fc.frac
            self.bounds["outputs"] = self.bounds["fc"]
        else:
            self.fc = None
            self.fy = self.fh
            self.bounds["outputs"] = float(self.h_bound[-m:].max())
        self.frac["outputs"] = self.fy

    # ---------------------------------------------------------------- bounds and formats

    def _refuse(self, what: str, hint: str = "use the float32 variant") -> CodegenError:
        return CodegenError(f"{self.src}: fixed point: {what}; {hint}")

    def _linear(self, key, cname, p_w, p_b, in_b, in_f, max_frac: int = 30) -> Linear:
        w = np.asarray(p_w, np.float64)
        b = np.asarray(p_b, np.float64)
        in_f = np.asarray(in_f, np.int64)
        acc = np.abs(w) @ np.asarray(in_b, np.float64)
        bound = acc + np.abs(b)
        colmax = np.abs(w).max(axis=0)
        # every column's weights in Q(P - F_in) fit int32 with a guard bit; the int64 sum fits too
        p = min(62 - _ib(acc.max()), int(min(int(f) + 30 - _ib(c) for f, c in zip(in_f, colmax))))
        frac = min(_frac(bound.max()), max_frac, p - 1)
        if frac < MIN_FRAC and self.strict:
            raise self._refuse(f"{key} reaches {bound.max():.3g} (interval bound): {frac} fractional bits")
        wq = np.round(np.ldexp(w, (p - in_f)[None, :]))
        bq = np.round(np.ldexp(b, frac))
        if max(np.abs(wq).max(initial=0), np.abs(bq).max(initial=0)) >= 2**31 and self.strict:
            raise self._refuse(f"a weight of {key} does not fit its Q format")
        self.frac[key], self.bounds[key], self.acc[key] = frac, float(bound.max()), p
        return Linear(key, cname, wq.astype(np.int64), bq.astype(np.int64), p, frac, bound)

    def _cell(self, l: int, prefix: str, in_b, in_f: int, h_b) -> dict:
        cfg, p = self.cfg, self.p
        n_in, n = len(in_b), len(h_b)
        key = f"layer_{l}." if cfg.wired else ""
        cp = f"l{l}_"
        cur_b = np.concatenate([in_b, h_b])
        cur_f = np.concatenate([np.full(n_in, in_f), np.full(n, self.fh)])
        backbone = []
        lecun = cfg.activation == "lecun_tanh"
        use_bb = not cfg.wired and cfg.backbone_layers > 0
        if use_bb:
            for k in range(cfg.backbone_layers):
                w, b = p[f"backbone.{k}.weight"], p[f"backbone.{k}.bias"]
                if lecun:  # 1.7159 tanh(0.666 x): 0.666 into this layer, 1.7159 into the next
                    w, b = w * (LECUN_IN * (LECUN_OUT if k else 1.0)), b * LECUN_IN
                lin = self._linear(f"backbone_{k}", f"bb{k}", w, b, cur_b, cur_f)
                act = cfg.activation
                if act in ("tanh", "lecun_tanh"):
                    self.tables.add("tanh")
                    out_b, out_f = np.ones(len(lin.bound)), 30
                else:
                    if act in ACT_FLOOR:
                        self.tables.add("sigmoid" if act == "silu" else "phi")
                    out_b, out_f = np.maximum(lin.bound, ACT_FLOOR.get(act, 0.0)), lin.frac
                self.bounds[f"backbone_{k}_activation"] = float(out_b.max())
                backbone.append(lin)
                cur_b, cur_f = out_b, np.full(len(out_b), out_f)
        mask = p.get(f"{prefix}sparsity_mask")
        heads = {}
        for head, short in (("ff1", "ff1"), ("ff2", "ff2"), ("time_a", "ta"), ("time_b", "tb")):
            w = p[f"{prefix}{head}.weight"]
            if mask is not None and head in ("ff1", "ff2"):
                w = w * mask
            if use_bb and lecun:
                w = w * LECUN_OUT
            heads[short] = (f"{key}{head}", f"{cp}{short}", w, p[f"{prefix}{head}.bias"])
        lin = {s: self._linear(*heads[s], cur_b, cur_f) for s in ("ff1", "ff2", "ta", "tb")}
        if cfg.keras:  # ff1, ff2 enter the update as they are: one format for both
            common = min(lin["ff1"].frac, lin["ff2"].frac)
            for s in ("ff1", "ff2"):
                lin[s] = self._linear(*heads[s], cur_b, cur_f, max_frac=common)
            ab_frac = common
            b1, b2 = lin["ff1"].bound, lin["ff2"].bound
            h_new = b1 + b2 if cfg.mode == "no_gate" else np.maximum(b1, b2)
        else:
            self.tables.add("tanh")
            ab_frac = 30
            h_new = np.full(n, 2.0 if cfg.mode == "no_gate" else 1.0)
        ta, tb = lin["ta"], lin["tb"]
        g = float((ta.bound * self.max_e + tb.bound).max())
        # the int64 sum's format: as fine as its terms, within 2^62 (|ta ts| + |tb| <= g)
        q = min(max(ta.frac + self.fe, tb.frac), 61 - _ib(g))
        # beyond +-R the logistic table is flat: an argument that can exceed R is clamped there
        # (in int64), so its int32 format needs only that range
        r = TABLES["sigmoid"][1]
        clamp = g > r
        fg = min(_frac(min(g, r)), q - 1)
        # the argument's rounding: time_a's times elapsed, time_b's, the conversion; sigmoid' <= 1/4
        # and |tanh(ff2) - tanh(ff1)| <= 2 make half of it the state's error
        rounding = self.max_e * 2.0 ** -(ta.frac + 1) + 2.0 ** -(tb.frac + 1) + 2.0 ** -(fg + 1)
        if rounding > GATE_ROUNDING_MAX and self.strict:
            raise self._refuse(
                f"{key}time_a (bound {ta.bound.max():.3g}, {ta.frac} fractional bits) times elapsed up to "
                f"{self.max_e:g} rounds the gate argument by up to {rounding:.2g} (the state by "
                f"{rounding / 2:.2g})",
                "lower --max-elapsed or use the float32 variant",
            )
        self.frac[f"{key}gate_argument"], self.bounds[f"{key}gate_argument"] = fg, g
        self.rounding[f"{key}gate_argument"] = rounding
        return dict(
            l=l,
            cp=cp,
            n_in=n_in,
            n=n,
            backbone=backbone,
            heads=lin,
            ab_frac=ab_frac,
            gate=(q, fg, clamp),
            h_new=h_new,
        )


# ------------------------------------------------------------------------- refusals


def check(model: CfCModel, input_range: float, max_elapsed: float) -> tuple[np.ndarray, str]:
    """(per-unit state bound, why it holds); raises a one-line :class:`CodegenError` for what has none.

    torch formulation: the tanh heads (default |h| <= 1, a convex combination of two tanh values;
    no_gate |h| <= 2). ncps.keras (no tanh on ff1/ff2): the least fixed point of the heads' interval
    bound as a function of the state bound, when the iteration from 0 converges and a slightly
    larger bound is invariant; otherwise refused.
    """
    cfg, src = model.config, model.source
    if cfg.mode == "pure":
        raise CodegenError(f"{src}: {FIXED_POINT_REFUSAL}")
    if cfg.mixed_memory:
        raise CodegenError(f"{src}: {_mixed_memory_reason(model, input_range)}")
    if not cfg.keras:
        h = 2.0 if cfg.mode == "no_gate" else 1.0
        how = "convex combination of two tanh" if cfg.mode == "default" else "tanh + sigmoid x tanh"
        return np.full(cfg.units, h), f"|h| <= {h:g}: {how} heads"
    h = np.zeros(cfg.units)
    for _ in range(2000):
        new = Plan(model, h, input_range, max_elapsed, strict=False).h_new
        if new.max() > 2**12:
            break
        if np.allclose(new, h, rtol=1e-9, atol=1e-12):
            inv = new * (1 + 1e-6) + 1e-9
            if np.all(Plan(model, inv, input_range, max_elapsed, strict=False).h_new <= inv):
                return inv, "ncps.keras heads (no tanh): invariant interval bound of the state"
            break
        h = new
    raise CodegenError(
        f"{src}: --fixed-point is not supported for this ncps.keras CfC: without tanh on ff1/ff2 the "
        "state is bounded only where the heads' interval bound contracts (|h| <= sum |W| |z| + |b| "
        "reaching a fixed point), and here it does not; use the float32 variant"
    )


def _mixed_memory_reason(model: CfCModel, input_range: float) -> str:
    """Why mixed memory is refused, with the only bound the LSTM's cell state c has."""
    p, u = model.params, model.config.units
    h = 2.0 if model.config.mode == "no_gate" else 1.0
    rows = slice(2 * u, 3 * u)  # the forget gate sigmoid(z + 1)
    z = (
        input_range * np.abs(p["lstm.input_map.weight"][rows]).sum(axis=1)
        + np.abs(p["lstm.input_map.bias"][rows])
        + h * np.abs(p["lstm.recurrent_map.weight"][rows]).sum(axis=1)
    ).max()
    with np.errstate(over="ignore"):
        c = 1.0 + math.exp(min(float(z) + 1.0, 700.0))
    return (
        "--fixed-point is not supported for CfC with mixed_memory: the LSTM cell state c is not bounded "
        f"by the tanh heads; its only bound, 1/(1 - max forget gate) = {c:.3g} (forget pre-activation "
        f"bound {z:.3g}), and an LSTM in fixed point is not implemented; use the float32 variant"
    )


# ------------------------------------------------------------------------------ C


SOURCE = Template(
    """$banner
#include "$name.h"
#include <stdint.h>

#define U $units
#define NI $n_in
#define NO $n_out
/* Q formats (fractional bits): inputs, state, elapsed, outputs */
#define QX $fx
#define QH $fh
#define QE $fe
#define QY $fy
#define X_LIMIT $x_limit
#define H_LIMIT $h_limit
#define E_MIN $e_min
#define E_MAX $e_max
/* the same limits in Q: inputs +-XQ_MAX, state +-HQ_MAX, elapsed [EQ_MIN, EQ_MAX] */
#define XQ_MAX $xq_max
#define HQ_MAX $hq_max
#define EQ_MIN $eq_min
#define EQ_MAX $eq_max
/* tables: UK fraction bits per interval; coordinates clamped to each table's umax */
#define UK $uk
#define QONE30 ((int32_t)1 << 30)

$arrays
/* sum_k w[k] x[k] in int64 (every product in the accumulator's Q(P)), rounded to Q(P - sh) */
static int32_t ${name}_dot(const int32_t *w, const int32_t *x, int n, int sh)
{
    int64_t acc = (int64_t)1 << (sh - 1);
    int k;
    for (k = 0; k < n; ++k) {
        acc += (int64_t)w[k] * x[k];
    }
    return (int32_t)(acc >> sh);
}

/* a >> sh, rounded (sh >= 1) */
static int32_t ${name}_rnd(int64_t a, int sh)
{
    return (int32_t)((a + ((int64_t)1 << (sh - 1))) >> sh);
}

/* f(|v|) in Q30 from a table: v in Q(K + s) is the coordinate u (rounded; clamped to umax), then the
 * minimax line of its interval, c_i + s_i u in uint32 arithmetic */
static int32_t ${name}_tab(const uint32_t *t, uint32_t umax, int32_t v, int s)
{
    uint32_t a = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    uint32_t u;
    const uint32_t *e;
    if (s > 0) {
        u = (a >> s) + ((a >> (s - 1)) & 1u);
    } else {
        u = a > (umax >> -s) ? umax : a << -s;
    }
    u = u > umax ? umax : u;
    e = t + ((u >> UK) << 1);
    return (int32_t)(e[0] + e[1] * u);
}

/* logistic in Q30: sigmoid(-v) = 1 - sigmoid(v) */
static int32_t ${name}_sigmoid(int32_t v, int s)
{
    int32_t r = ${name}_tab(sigmoid_lut, $umax_sigmoid, v, s);
    return v < 0 ? QONE30 - r : r;
}
$functions
static int32_t ${name}_sat(int32_t v, int32_t m)
{
    return v > m ? m : (v < -m ? -m : v);
}
$cells
static int32_t ${name}_fix(float f, float limit, float one)
{
    if (!(f == f)) {
        return 0;
    }
    if (f > limit) {
        f = limit;
    }
    if (f < -limit) {
        f = -limit;
    }
    return (int32_t)(f * one + (f >= 0.0f ? 0.5f : -0.5f));
}

#define to_q(f, limit) ${name}_fix((f), (limit), (float)((int32_t)1 << QX))
$normalize
"""
    + RESET_C
    + """
void ${name}_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq)
{
    int32_t xs[NI], hs[U], hn[U];
    int32_t ts = elapsed_q < EQ_MIN ? EQ_MIN : (elapsed_q > EQ_MAX ? EQ_MAX : elapsed_q);
    int i;
    for (i = 0; i < NI; ++i) {
        xs[i] = ${name}_sat(xq[i], XQ_MAX);
    }
    for (i = 0; i < U; ++i) {
        hs[i] = ${name}_sat(sq[i], HQ_MAX);
    }
$layers    for (i = 0; i < U; ++i) {
        sq[i] = hn[i];
    }
$output}

void ${name}_step(const float *x, float *state, float elapsed, float *y)
{
    int32_t xq[NI], sq[U], yq[NO];
    int i;
    float e = elapsed < E_MIN ? E_MIN : (elapsed > E_MAX ? E_MAX : elapsed);
    for (i = 0; i < NI; ++i) {
        xq[i] = to_q(x[i], X_LIMIT);
    }
    for (i = 0; i < U; ++i) {
        sq[i] = ${name}_fix(state[i], H_LIMIT, (float)((int32_t)1 << QH));
    }
    ${name}_step_q(xq, sq, ${name}_fix(e, E_MAX, (float)((int32_t)1 << QE)), yq);
    for (i = 0; i < U; ++i) {
        state[i] = (float)sq[i] * $h_scale;
    }
    for (i = 0; i < NO; ++i) {
        y[i] = (float)yq[i] * $y_scale;
    }
}
"""
)

FUNCTIONS = {
    "tanh": """
/* tanh in Q30: odd */
static int32_t NAME_tanh(int32_t v, int s)
{
    int32_t r = NAME_tab(tanh_lut, UMAX_TANH, v, s);
    return v < 0 ? -r : r;
}
""",
    "sat64": """
/* a gate argument clamped to the logistic table's range (int64, before its rounding shift) */
static int64_t NAME_sat64(int64_t v, int64_t m)
{
    return v > m ? m : (v < -m ? -m : v);
}
""",
    "relu": """
static int32_t NAME_relu(int32_t v)
{
    return v > 0 ? v : 0;
}
""",
    "silu": """
/* silu = v sigmoid(v), in v's format */
static int32_t NAME_silu(int32_t v, int s)
{
    return NAME_rnd((int64_t)v * NAME_sigmoid(v, s), 30);
}
""",
    "gelu": """
/* exact gelu = v Phi(v) (torch nn.GELU), Phi the normal CDF from a table (Phi(-v) = 1 - Phi(v)) */
static int32_t NAME_gelu(int32_t v, int s)
{
    int32_t r = NAME_tab(phi_lut, UMAX_PHI, v, s);
    return NAME_rnd((int64_t)v * (v < 0 ? QONE30 - r : r), 30);
}
""",
}

CELL = Template("""
/* CfC sub-cell $l ($mode): $n_in inputs in Q$in_f, $n units in Q$fh$doc */
static void ${name}_cell$l(const int32_t *in, const int32_t *h, int32_t ts, int32_t *out)
{
    int32_t z[$cat]$bb_decl;
    int i;
    for (i = 0; i < $n_in; ++i) {
        z[i] = in[i];
    }
    for (i = 0; i < $n; ++i) {
        z[$n_in + i] = h[i];
    }
$backbone    for (i = 0; i < $n; ++i) {
        int32_t a = $a;
        int32_t b = $b;
        int32_t ta = $ta;
        int32_t tb = $tb;
        int32_t g = ${name}_sigmoid(${name}_rnd($gate, $gsh), $gs);
        out[i] = ${name}_rnd($combine, $osh);
    }
}
""")


def _times(expr: str, k: int) -> str:
    """``expr`` (an int64 expression) times 2^k: a multiply for k > 0 (a negative value is never
    shifted left), an arithmetic shift right for k < 0."""
    if k == 0:
        return expr
    return f"{expr} * ((int64_t)1 << {k})" if k > 0 else f"({expr} >> {-k})"


def _act(name: str, act: str, x: str, frac: int) -> str:
    if act in ("tanh", "lecun_tanh"):
        return f"{name}_tanh({x}, {frac - table_shift('tanh')})"
    if act == "relu":
        return f"{name}_relu({x})"
    kind = "sigmoid" if act == "silu" else "phi"
    return f"{name}_{act}({x}, {frac - table_shift(kind)})"


def _cell_c(plan: Plan, cell: dict, name: str) -> str:
    cfg = plan.cfg
    n_in, n, l = cell["n_in"], cell["n"], cell["l"]
    lines, src, bb_decl, doc = [], "z", "", ""
    bbs = cell["backbone"]
    if bbs:
        bu = len(bbs[0].bq)
        bb_decl = f", bb0[{bu}]" + (f", bb1[{bu}]" if len(bbs) > 1 else "")
        doc = f", backbone {len(bbs)} x {bu} {cfg.activation}"
        for k, lin in enumerate(bbs):
            dst = f"bb{k % 2}"
            expr = _act(name, cfg.activation, lin.call(name, "i", src), lin.frac)
            lines.append(f"    for (i = 0; i < {bu}; ++i) {{\n        {dst}[i] = {expr};\n    }}\n")
            src = dst
    h = cell["heads"]
    if cfg.keras:
        a, b = h["ff1"].call(name, "i", src), h["ff2"].call(name, "i", src)
    else:
        s = table_shift("tanh")
        a = f"{name}_tanh({h['ff1'].call(name, 'i', src)}, {h['ff1'].frac - s})"
        b = f"{name}_tanh({h['ff2'].call(name, 'i', src)}, {h['ff2'].frac - s})"
    q, fg, clamp = cell["gate"]
    tat = _times("(int64_t)ta * ts", q - h["ta"].frac - plan.fe)
    tbt = _times("(int64_t)tb", q - h["tb"].frac)
    gate = f"{tbt} - {tat}" if cfg.keras else f"{tat} + {tbt}"
    if clamp:  # to +-R of the logistic table (R = 2^k)
        k = int(round(math.log2(TABLES["sigmoid"][1])))
        gate = f"{name}_sat64({gate}, (int64_t)1 << {q + k})"
    mix = "(int64_t)g * b" if cfg.mode == "no_gate" else "(int64_t)g * ((int64_t)b - a)"
    return CELL.substitute(
        name=name,
        l=l,
        mode=cfg.mode + (", ncps.keras" if cfg.keras else ""),
        n_in=n_in,
        n=n,
        in_f=plan.fx if l == 0 else plan.fh,
        fh=plan.fh,
        doc=doc,
        cat=n_in + n,
        bb_decl=bb_decl,
        backbone="".join(lines),
        a=a,
        b=b,
        ta=h["ta"].call(name, "i", src),
        tb=h["tb"].call(name, "i", src),
        gate=gate,
        gsh=q - fg,
        gs=fg - table_shift("sigmoid"),
        combine=f"{_times('(int64_t)a', 30)} + {mix}",
        osh=cell["ab_frac"] + 30 - plan.fh,
    )


def _float_below(x: float) -> float:
    """The float32 at or below x (a C limit never exceeds the bound it stands for)."""
    f = np.float32(x)
    return float(np.nextafter(f, np.float32(0)) if float(f) > x else f)


def generate_cfc_fixed(
    model: CfCModel,
    name: str,
    sha: str,
    min_elapsed: float = 0.01,
    max_elapsed: float = 100.0,
    input_range: float = 10.0,
    channels: Channels | None = None,
) -> tuple[str, str, dict]:
    """(header, source, Q-format info for the manifest) of the int32 fixed-point C of a CfC model.

    Raises :class:`CodegenError` (one line, naming the model and the reason) for pure mode, mixed
    memory, an ncps.keras model without a state bound, or a bound that leaves < MIN_FRAC bits.
    """
    cfg = model.config
    ch = channels or channels_of(model)
    h_bound, why = check(model, input_range, max_elapsed)
    plan = Plan(model, h_bound, input_range, max_elapsed)
    arrays, cells, layers = [], [], []
    start = 0
    for cell in plan.cells:
        for lin in [*cell["backbone"], *cell["heads"].values()]:
            arrays += lin.arrays()
        cells.append(_cell_c(plan, cell, name))
        l, n = cell["l"], cell["n"]
        src = "xs" if l == 0 else f"&hn[{start - cfg.layer_sizes[l - 1]}]"
        layers.append(f"    {name}_cell{l}({src}, &hs[{start}], ts, &hn[{start}]);\n")
        start += n
    if start != cfg.units:
        raise CodegenError(f"{model.source}: layer sizes add up to {start}, not units {cfg.units}")
    m = cfg.motor_size
    motor = f"&hn[{cfg.units - m}]"
    if plan.fc is not None:
        arrays += plan.fc.arrays()
        output = (
            f"    for (i = 0; i < NO; ++i) {{\n        yq[i] = {plan.fc.call(name, 'i', motor)};\n    }}\n"
        )
    else:
        output = f"    for (i = 0; i < NO; ++i) {{\n        yq[i] = hn[{cfg.units - m} + i];\n    }}\n"
    errors = {}
    for kind in sorted(plan.tables):
        lut, err = table(kind)
        arrays.append(c_array("uint32_t", f"{kind}_lut", lut, per_line=8))
        errors[kind] = err
    act = cfg.activation if (not cfg.wired and cfg.backbone_layers) else None
    funcs = (["tanh"] if "tanh" in plan.tables else []) + ([act] if act in ("relu", "silu", "gelu") else [])
    if any(cell["gate"][2] for cell in plan.cells):
        funcs.append("sat64")
    functions = "".join(
        FUNCTIONS[k]
        .replace("UMAX_TANH", f"{table_umax('tanh')}u")
        .replace("UMAX_PHI", f"{table_umax('phi')}u")
        .replace("NAME", name)
        for k in funcs
    )
    info = {
        "format": "int32, one Q format per quantity (frac_bits: fractional bits)",
        "frac_bits": dict(plan.frac),
        "accumulator_frac_bits": dict(plan.acc),
        "gate_argument_rounding": dict(plan.rounding),
        "bounds": dict(plan.bounds),
        "state_bound": why,
        "input_range": float(input_range),
        "min_elapsed": float(min_elapsed),
        "max_elapsed": float(max_elapsed),
        "tables": {
            k: f"{TABLES[k][3]} intervals on [0, {TABLES[k][1]:g}] (symmetry for < 0), minimax line each, Q30"
            for k in sorted(plan.tables)
        },
        "table_error_bound": errors,
    }
    what = f"{name}: CfC policy ({describe(cfg)}), fixed point (int32 Q formats)"
    up = name.upper()
    norm_decl, norm_def = normalize_c(ch, name, fixed_frac=plan.fx, input_range=input_range)
    h_lim = _float_below(float(h_bound.max()))
    decl = norm_decl + (
        f"\n/* {name}_step saturates each x[i] to +-{input_range:g} (the Q format's input range), the state "
        f"to +-{h_lim:g}\n * (its bound) and elapsed to [{min_elapsed:g}, {max_elapsed:g}]. */\n"
        f"\n/* Native fixed-point step on int32: x in Q{31 - plan.fx}.{plan.fx}, state in Q{31 - plan.fh}."
        f"{plan.fh}, elapsed in\n * Q{31 - plan.fe}.{plan.fe}, y in Q{31 - plan.fy}.{plan.fy} (fractional "
        f"bits below); saturates as {name}_step does. */\n"
        + f"#define {up}_Q_X_FRAC {plan.fx}\n#define {up}_Q_H_FRAC {plan.fh}\n"
        f"#define {up}_Q_E_FRAC {plan.fe}\n#define {up}_Q_Y_FRAC {plan.fy}\n"
        f"void {name}_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq);\n"
    )
    step_doc = Template(STEP_DOC).substitute(UP=up, what=describe(cfg) + ", fixed point")
    header = render_header(sha, what, up, name, cfg, ch, decl, step_doc, stdint=True)
    e_max = _float_below(max_elapsed)
    source = SOURCE.substitute(
        banner=banner(sha, what),
        name=name,
        UP=up,
        units=cfg.units,
        n_in=cfg.n_inputs,
        n_out=cfg.n_outputs,
        fx=plan.fx,
        fh=plan.fh,
        fe=plan.fe,
        fy=plan.fy,
        x_limit=c_float(_float_below(input_range)),
        h_limit=c_float(h_lim),
        e_min=c_float(min_elapsed),
        e_max=c_float(e_max),
        xq_max=int(math.floor(input_range * 2**plan.fx)),
        hq_max=int(math.floor(float(h_bound.max()) * 2**plan.fh)),
        eq_min=max(1, int(round(min_elapsed * 2**plan.fe))),
        eq_max=int(math.floor(max_elapsed * 2**plan.fe)),
        uk=UK,
        umax_sigmoid=f"{table_umax('sigmoid')}u",
        arrays="\n".join(arrays),
        functions=functions,
        cells="".join(cells),
        normalize=norm_def,
        layers="".join(layers),
        output=output,
        h_scale=c_float(2.0**-plan.fh),
        y_scale=c_float(2.0**-plan.fy),
    )
    return header, source, info


def estimate_cfc_fixed_memory(model: CfCModel, info: dict) -> dict:
    """Flash of the int32 weights and the tables, the step's stack buffers (exact: arm-none-eabi-size)."""
    cfg, p = model.config, model.params
    word = 4
    ints = sum(int(np.asarray(v).size) for k, v in p.items() if not k.endswith("sparsity_mask"))
    tables = sum(2 * TABLES[k][3] * word for k in info["tables"])
    bb = 2 * cfg.backbone_units if not cfg.wired and cfg.backbone_layers else 0
    cell = max(n_in + n for _, n_in, n in cfg.layers()) + bb
    stack = 2 * cfg.n_inputs + 3 * cfg.units + cfg.n_outputs + cell + 16  # + scalars and calls
    return {
        "flash_params_bytes_estimate": ints * word + tables,
        "ram_static_bytes": 0,
        "state_bytes_caller_owned": cfg.n_state * word,
        "stack_bytes_estimate": stack * word,
    }
