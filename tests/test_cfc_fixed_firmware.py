"""CfC fixed-point firmware (issue 14): the int32 C against the float64 reference on host gcc (modes
default and no_gate; backbone 0/1/2 with bounded and unbounded activations; sparse; wired; fc;
ncps.keras), the tables through the generated C, a Cortex-M4 run under qemu, no division on a
Cortex-M0, the one-line refusals (pure, mixed memory, keras without a bound) and the CLI path."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cfc_firmware import STEP_DRIVER, _unwired, _wired, random_cfc

from edgeliquid.cli import main
from edgeliquid.model.file import read, save
from edgeliquid.runtime.cfc_reference import CfCReferenceCell
from firmware_export import CodegenError, export_firmware
from firmware_export import harness as H
from firmware_export.cfc_fixed_c import table, table_shift

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None,
    reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)",
)
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None,
    reason="qemu-system-arm not installed (apt-get install qemu-system-arm)",
)

# docs/firmware.md: each fixed-point step within 1e-3 of the output scale, as for LTC fixed point
# (scale: max(1, the largest |y| or |state| of the reference over the run)).
TOL = 1e-3
STEPS = 240
XR, MIN_E, MAX_E = 10.0, 0.01, 100.0  # the default input range and elapsed range
SHIPPED = Path(__file__).resolve().parents[1] / "edgeliquid" / "data" / "cartpole_cfc.onnx"

NORM = {"input_normalization": json.dumps({"offset": [0.5, -1.0, 0.0, 2.0], "scale": [2.0, 0.5, 1.0, 0.25]})}

CASES = {
    "default-bb0": (_unwired(backbone_layers=0, backbone_units=0), 0.5, {}),
    "no_gate-bb1-lecun": (_unwired(mode="no_gate"), 0.5, {}),
    "default-bb1-tanh-sparse": (_unwired(activation="tanh", sparse=True), 0.5, {}),
    "default-bb2-relu": (_unwired(backbone_layers=2, activation="relu"), 0.5, {}),
    "no_gate-bb2-silu-fc": (
        _unwired(mode="no_gate", backbone_layers=2, activation="silu", proj_size=3),
        0.5,
        {},
    ),
    "default-bb2-gelu": (_unwired(backbone_layers=2, activation="gelu"), 0.5, {}),
    "wired-default-fc-norm": (_wired(proj_size=2), 0.5, NORM),
    "wired-no_gate": (_wired(mode="no_gate"), 0.5, {}),
    # ncps.keras (no tanh on the heads): bounded through a lecun backbone, or by contraction
    "keras-default-bb1-lecun": (_unwired(formulation="keras"), 0.5, {}),
    "shipped-cartpole-ncp": (None, 0.0, {}),  # edgeliquid/data/cartpole_cfc.onnx, trained, wired
    "keras-no_gate-bb0-small": (
        _unwired(mode="no_gate", formulation="keras", backbone_layers=0, backbone_units=0),
        0.05,
        {},
    ),
}


def _vectors(rng, n_in, n_state, steps):
    """Inputs mostly inside +-XR (a few beyond: saturated), elapsed log-uniform over [MIN_E, MAX_E]
    (a few outside: clamped), a non-zero initial state, a reset midway."""
    xs = np.clip(rng.normal(0, 3, (steps, n_in)), -XR, XR)
    xs[rng.random((steps, n_in)) < 0.03] = XR * 1.5
    xs[rng.random((steps, n_in)) < 0.03] = -XR
    el = np.exp(rng.uniform(math.log(MIN_E), math.log(MAX_E), steps))
    el[rng.random(steps) < 0.03] = MIN_E / 10
    el[rng.random(steps) < 0.03] = MAX_E * 5
    s0 = rng.uniform(-0.5, 0.5, n_state)
    return xs.astype(np.float32), el.astype(np.float32), s0.astype(np.float32), steps // 2


def _parity(tmp: Path, model, name: str, steps: int = STEPS, target: str = "host"):
    """(worst per-step error relative to the run's scale, manifest, out dir): each C step against the
    float64 reference from the same (the C's) state, on saturated inputs and clamped elapsed."""
    path = tmp / f"{name}.onnx"
    save(model, path)
    model = read(path)
    out = tmp / name
    man = export_firmware(path, out, name, fixed_point=True, min_elapsed=MIN_E, max_elapsed=MAX_E)
    cfg = model.config
    xs, el, s0, reset_at = _vectors(np.random.default_rng(7), cfg.n_inputs, cfg.n_state, steps)
    H.write_vectors(out, xs, el, s0, reset_at)
    (out / "step_driver.c").write_text(STEP_DRIVER.format(name=name, UP=name.upper()))
    if target == "host":
        exe = H.build_host(out, name, driver="step_driver.c")
        text = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=120).stdout
    else:
        text = H.run_qemu(H.build_m4(out, name, driver="step_driver.c"), timeout=600)
    m, n = cfg.n_outputs, cfg.n_state
    vals = [int(w, 16) for w in text.split() if len(w) == 8]
    assert len(vals) == steps * (m + n), f"expected {steps * (m + n)} values, got {len(vals)}"
    got = np.array(vals, np.uint32).view(np.float32).astype(np.float64).reshape(steps, m + n)
    cell = CfCReferenceCell(model, np.float64)
    prev = np.concatenate([s0.astype(np.float64)[None], got[:-1, m:]])
    prev[reset_at] = 0.0
    x_ref = np.clip(xs.astype(np.float64), -XR, XR)
    e_ref = np.clip(el.astype(np.float64), MIN_E, MAX_E)
    want = np.empty_like(got)
    with np.errstate(over="ignore"):  # the reference's exp(-x) of a saturated gate
        for t in range(steps):
            y, s = cell.step(x_ref[t][None], prev[t][None], e_ref[t : t + 1])
            want[t] = np.concatenate([y[0], s[0]])
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(got - want).max()) / scale, man, out


@needs_gcc
@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_c_matches_reference_on_host(tmp_path, case):
    cfg, scale, info = CASES[case]
    model = read(SHIPPED) if cfg is None else random_cfc(cfg, seed=len(case), scale=scale, info=info)
    cfg = model.config
    err, man, out = _parity(tmp_path, model, "q")
    print(f"{case}: worst error {err:.2e} of the output scale")  # docs/firmware.md quotes these
    assert err <= TOL, err
    q = man["fixed_point"]
    assert man["variant"] == "fixed" and man["cell"] == "cfc"
    assert q["input_range"] == XR and q["max_elapsed"] == MAX_E
    if cfg.formulation == "torch":
        assert q["bounds"]["state"] == (2.0 if cfg.mode == "no_gate" else 1.0)
        assert q["frac_bits"]["state"] == (28 if cfg.mode == "no_gate" else 29)
    assert all(f >= 8 for f in q["frac_bits"].values()), q["frac_bits"]
    assert man["ram_static_bytes"] == 0 and man["flash_params_bytes_estimate"] > 0
    src = (out / "q.c").read_text()
    assert "float" not in src.split("void q_step_q")[1].split("void q_step(")[0]  # integer only
    if info:
        assert "void q_normalize_q(const float *raw, int32_t *xq);" in (out / "q.h").read_text()


# Every table function of the generated C on a dense grid of its int32 input, at a coordinate shift
# s > 0 (rounded) and s < 0 (clamped left shift), against float64.
TAB_DRIVER = """#include <stdio.h>
#include "tq.c"
int main(void)
{
    long i;
    for (i = -200000; i <= 200000; ++i) {
        int32_t v = (int32_t)(i * 1607);
        printf("%ld %ld %ld %ld\\n", (long)tq_tanh(v, S_T), (long)tq_sigmoid(v, S_S), (long)tq_gelu(v, S_P),
               (long)tq_tanh(v >> 10, S_T - 10));
    }
    return 0;
}
"""


@needs_gcc
def test_tables_in_the_generated_c(tmp_path):
    path = tmp_path / "t.onnx"
    save(random_cfc(_unwired(backbone_layers=1, activation="gelu"), seed=4), path)
    out = tmp_path / "tq"
    export_firmware(path, out, "tq", fixed_point=True)
    frac = 24  # inputs in Q24 (|v| < 128): s = 24 - K > 0; the 4th column is Q14 (s = -4 for tanh)
    st, ss, sp = (frac - table_shift(k) for k in ("tanh", "sigmoid", "phi"))
    (out / "tab.c").write_text(f"#define S_T {st}\n#define S_S {ss}\n#define S_P {sp}\n" + TAB_DRIVER)
    subprocess.run(
        ["gcc", "-std=c99", "-O2", "-o", str(out / "tab"), str(out / "tab.c")], check=True, cwd=out
    )
    rows = np.array(
        subprocess.run([str(out / "tab")], capture_output=True, text=True, check=True).stdout.split(),
        np.int64,
    ).reshape(-1, 4)
    v = np.arange(-200000, 200001, dtype=np.int64) * 1607
    x = v / 2.0**frac
    erf = np.frompyfunc(math.erf, 1, 1)
    phi = 0.5 * (1 + erf(x / math.sqrt(2)).astype(np.float64))
    got = rows / 2.0**30
    err = {
        "tanh": np.abs(got[:, 0] - np.tanh(x)).max(),
        "sigmoid": np.abs(got[:, 1] - 1 / (1 + np.exp(-x))).max(),
        "gelu": np.abs(got[:, 2] * 2.0**30 / 2.0**frac - x * phi).max(),
        "tanh_s<0": np.abs(got[:, 3] - np.tanh((v >> 10) / 2.0 ** (frac - 10))).max(),
    }
    print({k: f"{e:.2e}" for k, e in err.items()})  # docs/firmware.md quotes these
    assert err["tanh"] <= table("tanh")[1] and err["sigmoid"] <= table("sigmoid")[1]
    # gelu = v Phi(v): Phi's table error times |v| where Phi is not yet 0 or 1, plus v's rounding
    assert err["gelu"] <= 4 * table("phi")[1]
    # s < 0: the coordinate is exact, the input has 6 fewer fractional bits
    assert err["tanh_s<0"] <= table("tanh")[1]
    assert table("tanh")[1] <= 1e-4 and table("sigmoid")[1] <= 5e-5 and table("phi")[1] <= 5e-5


@needs_arm
@needs_qemu
def test_fixed_c_matches_reference_on_cortex_m4(tmp_path):
    cfg = _unwired(backbone_layers=2, activation="silu", proj_size=2)
    err, man, out = _parity(tmp_path, random_cfc(cfg, seed=11), "m4", steps=200, target="m4")
    print(f"cortex-m4 qemu: worst error {err:.2e}")
    assert err <= TOL, err
    sizes = H.object_size(["arm-none-eabi-gcc"], out, out / "m4.c", H.M4_FLAGS)
    print(f"arm-none-eabi-size (M4, -Os): {sizes}; manifest estimate {man['flash_params_bytes_estimate']}")
    assert sizes["data"] == 0 and sizes["bss"] == 0, sizes


@needs_arm
def test_cortex_m0_has_no_division(tmp_path):
    """An FPU-less core without a divider: the fixed-point step calls no division routine at all."""
    path = tmp_path / "d.onnx"
    save(random_cfc(_wired(proj_size=2), seed=2), path)
    out = tmp_path / "d"
    export_firmware(path, out, "d", fixed_point=True)
    sizes = H.object_size(["arm-none-eabi-gcc"], out, out / "d.c", H.M0_FLAGS)
    assert sizes["ram"] == 0, sizes
    obj = next(out.glob("d_*.o"))
    nm = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    assert "div" not in nm.stdout, nm.stdout


@needs_gcc
@pytest.mark.parametrize("name", ["to", "tab", "l0", "bb0", "sigmoid"])
def test_names_do_not_collide_with_generated_identifiers(tmp_path, name):
    """NAME_fix vs the to_q macro, NAME_sigmoid vs the tables, NAME_* vs the weight arrays."""
    path = tmp_path / "n.onnx"
    save(random_cfc(_unwired(backbone_layers=2, activation="gelu", proj_size=2), seed=1, info=NORM), path)
    out = tmp_path / name
    export_firmware(path, out, name, fixed_point=True)
    obj = str(out / f"{name}.o")
    subprocess.run(["gcc", *H.HOST_FLAGS, "-c", "-o", obj, str(out / f"{name}.c")], check=True, timeout=120)


def _cli_error(tmp_path, model, capsys) -> str:
    path = tmp_path / "r.onnx"
    save(model, path)
    out = tmp_path / "fw"
    rc = main(["firmware", str(path), "-o", str(out), "--name", "pol", "--fixed-point"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"edgeliquid firmware: error: {path}: "), err
    assert not out.exists() or not any(out.iterdir())
    return err[0]


def test_pure_mode_refused_in_one_line(tmp_path, capsys):
    err = _cli_error(tmp_path, random_cfc(_unwired(mode="pure")), capsys)
    assert "CfC mode pure" in err and "no tanh head" in err and "float32" in err


def test_mixed_memory_refused_in_one_line(tmp_path, capsys):
    err = _cli_error(tmp_path, random_cfc(_wired(mixed_memory=True)), capsys)
    assert "mixed_memory" in err and "LSTM cell state c" in err and "forget" in err


def test_keras_without_a_bound_refused(tmp_path, capsys):
    """ncps.keras, no backbone, recurrent weights too large to contract: no state bound."""
    cfg = _unwired(formulation="keras", backbone_layers=0, backbone_units=0)
    err = _cli_error(tmp_path, random_cfc(cfg, scale=0.5), capsys)
    assert "ncps.keras" in err and "contract" in err
    with pytest.raises(CodegenError, match="ncps.keras"):
        export_firmware(tmp_path / "r.onnx", tmp_path / "fw2", "pol", fixed_point=True)


def test_cli_writes_the_fixed_point_files(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    save(random_cfc(_wired(proj_size=2), seed=6), path)
    out = tmp_path / "D"
    assert main(["firmware", str(path), "--fixed-point", "-o", str(out), "--name", "cq"]) == 0
    assert "(fixed;" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"cq.h", "cq.c", "edgeliquid_proto.h", "edgeliquid_proto.c", "manifest.json"} <= names
    man = json.loads((out / "manifest.json").read_text())
    q = man["fixed_point"]
    assert man["variant"] == "fixed" and man["layer_sizes"] == [4, 3, 2] and man["n_outputs"] == 2
    assert q["frac_bits"]["state"] == 29 and q["bounds"]["state"] == 1.0
    assert {"layer_2.ff1", "layer_2.gate_argument", "fc", "outputs"} <= set(q["bounds"])
    assert set(q["tables"]) == {"tanh", "sigmoid"} and q["max_elapsed"] == 100.0
    assert man["flash_params_bytes_estimate"] > 2 * 256 * 8 and man["ram_static_bytes"] == 0
    header = (out / "cq.h").read_text()
    assert "void cq_step(const float *x, float *state, float elapsed, float *y);" in header
    assert "void cq_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq);" in header
    assert f"#define CQ_Q_H_FRAC {q['frac_bits']['state']}" in header


def test_gate_rounding_refused_then_accepted_with_a_lower_max_elapsed(tmp_path, capsys):
    """Large time heads: time_a's rounding times elapsed would exceed the documented error at 100."""
    model = random_cfc(_unwired(backbone_layers=3, activation="silu"), seed=3, scale=1.5)
    err = _cli_error(tmp_path, model, capsys)
    assert "time_a" in err and "--max-elapsed" in err
    man = export_firmware(tmp_path / "r.onnx", tmp_path / "ok", "pol", fixed_point=True, max_elapsed=1.0)
    assert max(man["fixed_point"]["gate_argument_rounding"].values()) <= 2e-3
