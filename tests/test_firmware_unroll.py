"""``--unroll`` (#17): one block of C per synapse instead of the CSR loops gives the loops' bits
(host gcc, and the Cortex-M4 under qemu) in fewer M4 instructions; the option through the CLI.
"all" unrolls the sensory pass and the sub-steps' recurrent passes, "substeps" only the latter."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model

from edgeliquid.cli import main
from edgeliquid.model.cell import LTCModel
from edgeliquid.model.file import read, save
from edgeliquid.model.guarantees import stability
from firmware_export import export_firmware
from firmware_export import harness as H
from firmware_export.float_c import _state_limit
from firmware_export.layout import FirmwareModel

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
CFC = ROOT / "edgeliquid" / "data" / "cartpole_cfc.onnx"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_m4 = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc or qemu-system-arm not installed",
)

# model kind: (seed, density, mixed memory, solver, unfolds); "demo" is the shipped policy
KINDS = {
    "sparse": (1, 0.25, False, "fused_semi_implicit_euler", 6),
    "dense": (2, 1.0, False, "fused_semi_implicit_euler", 3),
    "mixed": (3, 0.3, True, "fused_semi_implicit_euler", 4),
    "ee": (4, 0.3, False, "explicit_euler", 6),
    "rk4": (5, 0.5, True, "rk4", 2),
    "one": (6, 0.3, False, "fused_semi_implicit_euler", 1),  # fixed point: no buffers between
}
# case: (kind, export options, initial state scale, unroll level). A state scale of 3 starts
# outside the fast sweep's bound (|v| <= max |vleak|, |E|): the clamping fallback runs until the reset.
CASES = {
    "demo_fast": ("demo", {"fast_sigmoid": True}, 3.0, "all"),
    "demo_fast_substeps": ("demo", {"fast_sigmoid": True}, 3.0, "substeps"),
    "demo_exact": ("demo", {}, 0.5, "all"),
    "sparse_fast": ("sparse", {"fast_sigmoid": True}, 3.0, "all"),
    "dense_exact": ("dense", {}, 0.5, "substeps"),
    "mixed_fast": ("mixed", {"fast_sigmoid": True}, 0.5, "all"),
    "ee_fast": ("ee", {"fast_sigmoid": True}, 0.5, "all"),
    "rk4_exact": ("rk4", {}, 0.5, "substeps"),
    "demo_fixed": ("demo", {"fixed_point": True}, 0.5, "all"),
    "dense_fixed": ("dense", {"fixed_point": True}, 0.5, "substeps"),
    "one_fixed": ("one", {"fixed_point": True}, 0.5, "all"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("unroll_models")
    out = {"demo": DEMO}
    for kind, (seed, density, mixed, solver, unfolds) in KINDS.items():
        m = random_model(
            np.random.default_rng(seed), units=12, n_in=5, motors=2, density=density, mixed=mixed
        )
        m = LTCModel(
            m.config.replace(solver=solver, ode_unfolds=unfolds), m.params, m.roles, m.info, m.source
        )
        out[kind] = d / f"{kind}.onnx"
        save(m, out[kind])
    return out


def _vectors(model, steps: int, state_scale: float, seed: int = 7):
    cfg = model.config
    rng = np.random.default_rng(seed)
    xs = rng.normal(0, 1, (steps, cfg.n_inputs)).astype(np.float32)
    if cfg.solver == "fused_semi_implicit_euler":
        el = rng.uniform(0.05, 3.0, steps)
    else:  # inside the explicit scheme's stability bound
        el = rng.uniform(0.2, 1.0, steps) * stability(model)[cfg.solver]["max_elapsed"]
    s0 = rng.uniform(-state_scale, state_scale, cfg.n_state).astype(np.float32)
    return xs, el.astype(np.float32), s0, steps // 2


def _host_bits(out: Path, vectors) -> str:
    H.write_vectors(out, *vectors)
    H.write_driver(out, "pol")
    exe = H.build_host(out, "pol")
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


@needs_gcc
@pytest.mark.parametrize("case", list(CASES))
def test_unrolled_gives_the_loops_bits(tmp_path, models, case):
    kind, kw, scale, level = CASES[case]
    path = models[kind]
    model = read(path)
    vectors = _vectors(model, 400, scale)
    if scale > 1.0:  # the fallback really runs: the start is outside the bound
        assert np.abs(vectors[2]).max() > _state_limit(FirmwareModel.of(model))[0]
    bits = {}
    for unroll in ("none", level):
        out = tmp_path / unroll
        man = export_firmware(path, out, "pol", unroll=unroll, **kw)
        assert man["unroll"] == unroll
        bits[unroll] = _host_bits(out, vectors)
    src = (tmp_path / level / "pol.c").read_text()
    assert ("s_src" in src) == (level == "substeps")  # "all": the sensory pass has no loop left
    # the recurrent CSR survives only as the fast fused sweep's clamping fallback
    fallback = "_sweep(v, vn, cmt, ns, ds, 1)" in src
    assert ("r_src" in src) == fallback
    assert fallback == (case in ("demo_fast", "demo_fast_substeps", "sparse_fast", "mixed_fast"))
    lines = bits[level].split()
    want = model.config.n_outputs * 400 + model.config.n_state
    assert len(lines) == want and len(set(lines)) > 10  # real outputs, not a constant
    assert bits[level] == bits["none"]


# ------------------------------------------------------------- Cortex-M4 under qemu

COUNT_MAIN = """#include "pol.h"
int main(void)
{
    float s[POL_STATE_SIZE], x[POL_N_INPUTS], y[POL_N_OUTPUTS];
    int i, t;
    pol_reset(s);
    for (i = 0; i < POL_N_INPUTS; ++i) x[i] = 0.1f * (float)(i + 1);
    for (t = 0; t < STEPS; ++t) { x[0] = (float)(t & 7) * 0.05f; pol_step(x, s, 1.0f, y); }
    return y[0] > 1e30f;
}
"""


def _m4_insn_per_step(out: Path) -> float:
    """M4 instructions per NAME_step at -O2: qemu single-steps, (21 steps - 1 step) / 20."""
    counts = []
    for steps in (1, 21):
        (out / "count_main.c").write_text(f"#define STEPS {steps}\n" + COUNT_MAIN)
        elf = H.build_m4(out, "pol", driver="count_main.c", elf_name=f"count{steps}.elf", opt="-O2")
        counts.append(H.count_instructions(elf, timeout=300))
    return (counts[1] - counts[0]) / 20


@needs_gcc
@needs_m4
@pytest.mark.parametrize("kw", [{"fast_sigmoid": True}, {"fixed_point": True}], ids=["fast", "fixed"])
def test_m4_unrolled_same_bits_fewer_instructions(tmp_path, kw):
    model = read(DEMO)
    vectors = _vectors(model, 200, 0.5, seed=3)
    got, insn = {}, {}
    for unroll in ("none", "substeps", "all"):
        out = tmp_path / unroll
        export_firmware(DEMO, out, "pol", unroll=unroll, **kw)
        H.write_vectors(out, *vectors)
        H.write_driver(out, "pol")
        got[unroll] = H.run_qemu(H.build_m4(out, "pol", opt="-O2")).split()
        insn[unroll] = _m4_insn_per_step(out)
    host = _host_bits(tmp_path / "all", vectors).split()
    # the M4's vfma / smmla give the host's fmaf / 64-bit products bit for bit
    assert got["all"] == got["substeps"] == got["none"] == host
    assert 0 < insn["all"] < insn["substeps"] <= 0.85 * insn["none"], insn


@needs_m4
def test_app_with_unrolled_substeps_fits_the_budget(tmp_path):
    """The shipped policy's controller app (fast sigmoid, -O2): "substeps" stays within 16 KB
    flash / 4 KB RAM and its measured policy step is cheaper than the loops'."""
    from firmware_export.app import build_app

    apps = {
        u: build_app(DEMO, tmp_path / u, "cp", "mps2-an386", unroll=u)["app"] for u in ("none", "substeps")
    }
    a, loop = apps["substeps"], apps["none"]
    assert a["flash_bytes"] <= 16 * 1024 and a["ram_bytes"] <= 4 * 1024, a
    assert a["flash_bytes"] > loop["flash_bytes"]  # the price: code per synapse
    assert 0 < a["instructions"]["step_mean"] <= 0.85 * loop["instructions"]["step_mean"], (a, loop)


# ---------------------------------------------------------------------------- CLI


def test_cli_unroll_and_cfc_refusal(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["firmware", str(DEMO), "-o", str(out), "--name", "cp", "--fast-sigmoid", "--unroll"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["unroll"] == "all" and man["variant"] == "float32-fast-sigmoid"
    assert "cp_sweep_u(" in (out / "cp.c").read_text()
    sub = tmp_path / "s"
    assert main(["firmware", str(DEMO), "-o", str(sub), "--fixed-point", "--unroll", "substeps"]) == 0
    assert json.loads((sub / "manifest.json").read_text())["unroll"] == "substeps"
    capsys.readouterr()
    bad = tmp_path / "c"
    assert main(["firmware", str(CFC), "-o", str(bad), "--unroll"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeliquid firmware: error: "), lines
    assert "--unroll" in lines[0] and "LTC" in lines[0] and not bad.exists()
