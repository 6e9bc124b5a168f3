"""CfC firmware (issue 14): the generated float32 C against the numpy reference on host gcc and a
Cortex-M4 under qemu, across modes, backbones, activations, wiring, mixed memory and projection;
the fixed-point refusal and the CLI path."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeliquid.cli import main
from edgeliquid.model.cfc import CfCConfig, CfCModel, cfc_expected_shapes
from edgeliquid.model.file import read, save
from edgeliquid.runtime.cfc_reference import CfCReferenceCell
from firmware_export import CodegenError, export_firmware
from firmware_export import harness as H

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None,
    reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)",
)
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None,
    reason="qemu-system-arm not installed (apt-get install qemu-system-arm)",
)

# float32 C vs the float64 reference, each step from the same state: worst |error| relative to
# max(1, |y|, |state|). Measured <= ~1e-6 (docs/firmware.md); the bound leaves room for libm.
TOL = 1e-5
STEPS = 300


def random_cfc(cfg: CfCConfig, seed: int = 0, scale: float = 0.5, info: dict | None = None) -> CfCModel:
    """Random parameters of the right shapes; masks 0/1 (wired: full recurrence in each layer)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in cfc_expected_shapes(cfg).items():
        if name.endswith("sparsity_mask"):
            mask = (rng.random(shape) < 0.6).astype(np.float64)
            if cfg.wired:
                mask[:, shape[1] - shape[0] :] = 1.0
            params[name] = mask
        else:
            params[name] = rng.normal(0.0, scale, shape)
    return CfCModel(cfg, params, info=dict(info or {}))


def _unwired(**kw) -> CfCConfig:
    base = dict(n_inputs=4, units=6, backbone_units=10, backbone_layers=1)
    return CfCConfig(**{**base, **kw})


def _wired(**kw) -> CfCConfig:
    base = dict(n_inputs=4, units=9, backbone_units=0, backbone_layers=0, layer_sizes=(4, 3, 2))
    return CfCConfig(**{**base, **kw})


CASES = {
    **{f"{m}-bb1-lecun": _unwired(mode=m) for m in ("default", "no_gate", "pure")},
    **{
        f"default-bb2-{a}": _unwired(backbone_layers=2, activation=a)
        for a in ("silu", "relu", "tanh", "gelu")
    },
    "pure-bb2-gelu": _unwired(mode="pure", backbone_layers=2, activation="gelu"),
    "no_gate-bb3-silu": _unwired(mode="no_gate", backbone_layers=3, activation="silu"),
    "default-bb0": _unwired(backbone_layers=0, backbone_units=0),
    "no_gate-bb0-sparse": _unwired(mode="no_gate", backbone_layers=0, backbone_units=0, sparse=True),
    "default-bb1-sparse": _unwired(sparse=True),
    "default-mixed-fc": _unwired(mixed_memory=True, proj_size=3),
    "pure-mixed": _unwired(mode="pure", mixed_memory=True),
    **{f"wired-{m}": _wired(mode=m) for m in ("default", "no_gate", "pure")},
    "wired-mixed-fc": _wired(mixed_memory=True, proj_size=2),
    "wired-fc1layer": _wired(units=5, layer_sizes=(5,), proj_size=1),
}


def _vectors(rng, n_in, n_state, steps):
    xs = rng.normal(0, 1, (steps, n_in)).astype(np.float32)
    el = rng.uniform(0.05, 3.0, steps).astype(np.float32)  # irregular sampling
    s0 = rng.uniform(-0.5, 0.5, n_state).astype(np.float32)  # non-zero initial state
    return xs, el, s0, steps // 2  # and a reset midway


# Prints y and the whole state after every step (hex of the float32 bits), so each step can be
# checked from the C's own previous state: a random CfC can be chaotic (expanding recurrent map),
# and there a trajectory comparison measures the model's sensitivity, not the C.
STEP_DRIVER = """#include "{name}.h"
#include "vectors.h"
#include <stdio.h>
#include <stdint.h>
#include <string.h>

static void put(float f)
{{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    printf("%08lx\\n", (unsigned long)u);
}}

int main(void)
{{
    float state[{UP}_STATE_SIZE];
    float y[{UP}_N_OUTPUTS];
    int t, k;
    memcpy(state, init_state, sizeof state);
    for (t = 0; t < T_STEPS; ++t) {{
        if (t == RESET_AT) {{
            {name}_reset(state);
        }}
        {name}_step(&xs[t * {UP}_N_INPUTS], state, el[t], y);
        for (k = 0; k < {UP}_N_OUTPUTS; ++k) {{
            put(y[k]);
        }}
        for (k = 0; k < {UP}_STATE_SIZE; ++k) {{
            put(state[k]);
        }}
    }}
    return 0;
}}
"""


def _parity(tmp: Path, model: CfCModel, name: str, steps: int = STEPS, target: str = "host", **kw):
    """(worst per-step error, manifest, out dir): each C step against the float64 reference step from
    the same (C's float32) state, relative to max(1, |y|, |state|); irregular elapsed, non-zero start,
    a reset midway."""
    path = tmp / f"{name}.onnx"
    save(model, path)
    model = read(path)  # the C sees the file's float32 values; so does the reference
    out = tmp / name
    man = export_firmware(path, out, name, **kw)
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
    worst = 0.0
    for t in range(steps):
        y, s = cell.step(xs[t][None].astype(np.float64), prev[t][None], np.array([el[t]], np.float64))
        want = np.concatenate([y[0], s[0]])
        scale = max(1.0, float(np.abs(want).max()))
        worst = max(worst, float(np.abs(got[t] - want).max()) / scale)
    return worst, man, out


@needs_gcc
@pytest.mark.parametrize("case", sorted(CASES))
def test_float_c_matches_reference_on_host(tmp_path, case):
    cfg = CASES[case]
    err, man, out = _parity(tmp_path, random_cfc(cfg, seed=len(case)), "pol")
    assert err <= TOL, err
    assert man["cell"] == "cfc" and man["mode"] == cfg.mode and man["variant"] == "float32"
    assert man["n_outputs"] == cfg.n_outputs and man["state_size"] == cfg.n_state
    assert man["ram_static_bytes"] == 0 and man["flash_params_bytes_estimate"] > 0
    if cfg.activation == "gelu" and cfg.backbone_layers:
        assert "erff(" in (out / "pol.c").read_text()


@needs_gcc
def test_masks_apply_to_ff_heads_only(tmp_path):
    """A mask of zeros on the heads: the output must still depend on the time heads (not masked)."""
    cfg = _unwired(backbone_layers=0, backbone_units=0, sparse=True)
    model = random_cfc(cfg, seed=3)
    model.params["sparsity_mask"] = np.zeros_like(model.params["sparsity_mask"])
    err, _, out = _parity(tmp_path, model, "msk", steps=50)
    assert err <= TOL, err
    src = (out / "msk.c").read_text()
    ff1 = src.split("l0_ff1_w")[1].split("};")[0]
    ta = src.split("l0_ta_w")[1].split("};")[0]
    assert set(ff1.split("{")[1].replace(",", " ").split()) == {"0.0f"}
    assert "0x" in ta  # the time head keeps its weights


@needs_gcc
def test_fast_sigmoid_variant(tmp_path):
    err, man, _ = _parity(tmp_path, random_cfc(_wired(mixed_memory=True), seed=5), "fs", fast_sigmoid=True)
    assert man["variant"] == "float32-fast-sigmoid"
    assert err <= 2e-5, err


@needs_gcc
def test_normalize_generated_when_recorded(tmp_path):
    info = {
        "input_normalization": json.dumps({"offset": [1.0, 2.0, 3.0, 4.0], "scale": [0.5, 2.0, 1.0, 0.25]})
    }
    model = random_cfc(_unwired(), seed=9, info=info)
    err, man, out = _parity(tmp_path, model, "nrm", steps=40)
    assert err <= TOL
    assert "void nrm_normalize(const float *raw, float *x);" in (out / "nrm.h").read_text()
    assert man["input_normalization"]["function"] == "nrm_normalize"


@needs_arm
@needs_qemu
def test_float_c_matches_reference_on_cortex_m4(tmp_path):
    cfg = CfCConfig(
        n_inputs=4, units=8, mode="default", backbone_units=12, backbone_layers=2, activation="gelu"
    )
    err, _, _ = _parity(tmp_path, random_cfc(cfg, seed=11), "m4", steps=200, target="m4")
    assert err <= TOL, err
    err, _, _ = _parity(tmp_path, random_cfc(_wired(mixed_memory=True), seed=12), "m4w", 200, "m4")
    assert err <= TOL, err


@needs_arm
def test_no_mutable_globals_on_cortex_m4(tmp_path):
    path = tmp_path / "g.onnx"
    save(random_cfc(_unwired(mixed_memory=True, proj_size=2, activation="silu"), seed=2), path)
    export_firmware(path, tmp_path / "g", "g")
    sizes = H.object_size(["arm-none-eabi-gcc"], tmp_path / "g", tmp_path / "g" / "g.c", H.M4_FLAGS)
    assert sizes["data"] == 0 and sizes["bss"] == 0, sizes


def test_fixed_point_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.onnx"
    save(random_cfc(_unwired(mode="pure")), path)  # default/no_gate: test_cfc_fixed_firmware
    out = tmp_path / "fw"
    rc = main(["firmware", str(path), "-o", str(out), "--name", "pol", "--fixed-point"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"edgeliquid firmware: error: {path}: --fixed-point")
    assert "not supported for CfC" in err[0] and "|h| <= 1" in err[0]
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(CodegenError, match="CfC"):
        export_firmware(path, out, "pol", fixed_point=True)


def test_cli_writes_the_files(tmp_path, capsys):
    path = tmp_path / "c.onnx"
    save(random_cfc(_wired(proj_size=2)), path)
    out = tmp_path / "fw"
    assert main(["firmware", str(path), "-o", str(out), "--name", "cfcpol"]) == 0
    assert "float32" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"cfcpol.h", "cfcpol.c", "edgeliquid_proto.h", "edgeliquid_proto.c", "manifest.json"} <= names
    man = json.loads((out / "manifest.json").read_text())
    assert man["layer_sizes"] == [4, 3, 2] and man["proj_size"] == 2 and man["n_outputs"] == 2
    header = (out / "cfcpol.h").read_text()
    for decl in (
        "#define CFCPOL_N_INPUTS 4",
        "#define CFCPOL_STATE_SIZE 9",
        "void cfcpol_reset(float *state);",
    ):
        assert decl in header
    assert "void cfcpol_step(const float *x, float *state, float elapsed, float *y);" in header
