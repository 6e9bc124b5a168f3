"""The explicit solvers (#15) in the generated C: float32 and fixed point against the reference,
the fixed-point refusals, and the Cortex-M0 division census (fused divides, explicit Euler not)."""

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
from firmware_export import CodegenError, export_firmware
from firmware_export import harness as H
from firmware_export.fixed_c import explicit_euler_limit
from firmware_export.layout import FirmwareModel

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed"
)
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed"
)

# name: (seed, density, mixed memory, solver, unfolds)
MODELS = {
    "ee_sparse": (21, 0.3, False, "explicit_euler", 6),
    "ee_dense": (22, 1.0, False, "explicit_euler", 3),
    "ee_mixed": (23, 0.4, True, "explicit_euler", 2),
    "rk4_sparse": (24, 0.3, False, "rk4", 3),
    "rk4_mixed": (25, 0.5, True, "rk4", 2),
}


def _with_solver(m: LTCModel, solver: str, unfolds: int) -> LTCModel:
    return LTCModel(m.config.replace(solver=solver, ode_unfolds=unfolds), m.params, m.roles, m.info, m.source)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The model files of MODELS (written once; the exporter reads files, as the CLI does)."""
    d = tmp_path_factory.mktemp("solver_models")
    out = {}
    for key, (seed, density, mixed, solver, unfolds) in MODELS.items():
        m = random_model(
            np.random.default_rng(seed), units=10, n_in=4, motors=2, density=density, mixed=mixed
        )
        out[key] = d / f"{key}.onnx"
        save(_with_solver(m, solver, unfolds), out[key])
    return out


def _vectors(rng, n_in, n_state, steps, max_elapsed):
    xs = rng.normal(0, 1, (steps, n_in)).astype(np.float32)
    el = (rng.uniform(0.2, 1.0, steps) * max_elapsed).astype(np.float32)  # irregular, inside the bound
    s0 = rng.uniform(-0.5, 0.5, n_state).astype(np.float32)
    return xs, el, s0, steps // 2


def _run_host(path: Path, out: Path, steps: int, elapsed_bound: float, **kw):
    """Export, run the C on the host with gcc, compare with the float64 reference step by step."""
    model = read(path)
    man = export_firmware(path, out, "pol", **kw)
    xs, el, s0, reset_at = _vectors(
        np.random.default_rng(7), model.config.n_inputs, model.config.n_state, steps, elapsed_bound
    )
    H.write_vectors(out, xs, el, s0, reset_at)
    H.write_driver(out, "pol")
    exe = H.build_host(out, "pol")
    stdout = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got_y, got_s = H.parse_hex(stdout, steps, model.config.n_outputs, model.config.n_state)
    want_y, want_s = H.reference_outputs(model, xs, el, s0, reset_at)
    scale = max(1.0, float(np.abs(want_y).max()))
    return np.abs(got_y - want_y).max(axis=1) / scale, np.abs(got_s - want_s).max() / scale, man


@needs_gcc
@pytest.mark.parametrize("key", list(MODELS))
def test_float_c_matches_reference(tmp_path, files, key):
    model = read(files[key])
    bound = stability(model)[model.config.solver]["max_elapsed"]
    err, err_state, man = _run_host(files[key], tmp_path / key, 2000, bound)
    assert err.max() <= 1e-5, err.max()
    assert err_state <= 1e-5, err_state
    assert man["solver"] == model.config.solver and man["ode_unfolds"] == model.config.ode_unfolds
    assert man["flash_params_bytes_estimate"] > 0 and man["ram_static_bytes"] == 0
    c = (tmp_path / key / "pol.c").read_text()
    # 1/cm folded in at export: the explicit step multiplies (no cm, no EPSILON in the C)
    assert "static const float inv_cm[" in c and "float cm[" not in c and "EPSILON" not in c


@needs_gcc
@pytest.mark.parametrize("key", ["ee_sparse", "ee_dense"])
def test_fixed_point_explicit_euler_within_documented_bound(tmp_path, files, key):
    limit = explicit_euler_limit(FirmwareModel.of(read(files[key])))
    err, err_state, man = _run_host(
        files[key], tmp_path / key, 3000, limit, fixed_point=True, max_elapsed=limit
    )
    q = man["fixed_point"]
    assert q["convexity_max_elapsed"] == pytest.approx(limit) and q["max_elapsed"] == limit
    assert "cm_over_dt" not in q["bounds"] and q["frac_bits"] >= 15
    assert err.max() <= 1e-3, err.max()  # the fixed-point tolerance of docs/firmware.md
    assert err_state <= 1e-3, err_state
    assert man["flash_params_bytes_estimate"] > 0 and man["stack_bytes_estimate"] > 0
    saved = json.loads((tmp_path / key / "manifest.json").read_text())
    assert saved["fixed_point"]["frac_bits"] == q["frac_bits"]


def _fails(capsys, argv, *expect):
    rc = main(["firmware", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeliquid firmware: error: "), err
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


def test_fixed_point_refusals_are_one_line(tmp_path, files, capsys):
    out = tmp_path / "o"
    _fails(
        capsys, [str(files["rk4_sparse"]), "-o", str(out), "--fixed-point"], "rk4", "convex", "float variant"
    )
    ee = str(files["ee_sparse"])
    limit = explicit_euler_limit(FirmwareModel.of(read(files["ee_sparse"])))
    # no --max-elapsed: the default 100 is far beyond ode_unfolds x tau_min
    line = _fails(capsys, [ee, "-o", str(out), "--fixed-point"], "--max-elapsed", "tau_min", ee)
    shown = float(line.split("tau_min = ")[1].split()[0])
    assert shown <= limit < shown * 1.001  # printed rounded down: it can be passed back
    _fails(
        capsys, [ee, "-o", str(out), "--fixed-point", "--max-elapsed", repr(limit * 1.01)], "--max-elapsed"
    )
    _fails(capsys, [ee, "-o", str(out), "--fixed-point", "--max-elapsed", "0.001"], "--min-elapsed")
    _fails(
        capsys, [str(files["ee_mixed"]), "-o", str(out), "--fixed-point", "--max-elapsed", "0.02"], "mixed"
    )
    assert not out.exists()  # nothing written
    # the printed bound itself is accepted, through the CLI
    assert main(["firmware", ee, "-o", str(out), "--fixed-point", "--max-elapsed", str(shown)]) == 0
    with pytest.raises(CodegenError, match="rk4"):
        export_firmware(files["rk4_sparse"], tmp_path / "p", "p", fixed_point=True, max_elapsed=0.01)


# -------------------------------------------- Cortex-M0: what explicit Euler saves there


@pytest.fixture(scope="module")
def m0_pair(tmp_path_factory, files):
    """The same model (ee_sparse's weights and unfolds), fused and explicit Euler, fixed point."""
    d = tmp_path_factory.mktemp("m0")
    ee = read(files["ee_sparse"])
    fused = d / "fused.onnx"
    save(_with_solver(ee, "fused_semi_implicit_euler", ee.config.ode_unfolds), fused)
    limit = explicit_euler_limit(FirmwareModel.of(ee))
    out = {}
    for kind, path, kw in (("fused", fused, {}), ("euler", files["ee_sparse"], {"max_elapsed": limit})):
        out[kind] = (d / kind, export_firmware(path, d / kind, "pol", fixed_point=True, **kw))
    return out, ee.config, limit


@needs_arm
def test_m0_fused_step_calls_the_division_helper_explicit_euler_does_not(m0_pair):
    pair, cfg, _ = m0_pair
    undefined = {}
    for kind, (d, _) in pair.items():
        obj = d / "pol_m0.o"
        subprocess.run(
            [
                "arm-none-eabi-gcc",
                *H.M0_FLAGS,
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-c",
                "-o",
                str(obj),
            ]
            + [str(d / "pol.c")],
            check=True,
            capture_output=True,
        )
        nm = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True, check=True)
        undefined[kind] = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    divisions = {"__aeabi_idiv", "__aeabi_uidiv", "__aeabi_idivmod", "__aeabi_ldivmod", "__aeabi_uldivmod"}
    divisions |= {"__aeabi_fdiv", "__aeabi_ddiv", "__divsi3", "__divdi3"}
    assert "__aeabi_idiv" in undefined["fused"]  # 32-bit qdiv per neuron (#17), dt per step
    assert "__aeabi_ldivmod" not in undefined["fused"]
    assert not undefined["euler"] & divisions, undefined["euler"]
    assert "__aeabi_lmul" in undefined["euler"]  # it does multiply in 64 bits (qmul)


@needs_arm
@needs_qemu
def test_m0_division_census_under_qemu(m0_pair):
    """Executed on a Cortex-M0 (qemu microbit): fused = U x UNFOLDS + U + 1 32-bit divisions per
    step (no 64-bit one); explicit Euler none; instructions counted from qemu's exec log."""
    pair, cfg, limit = m0_pair
    steps = 3
    runs = {}
    for kind, (d, man) in pair.items():
        f = man["fixed_point"]["frac_bits"]
        rng = np.random.default_rng(4)
        xq = np.round(rng.normal(0, 1, (steps, cfg.n_inputs)) * 2.0**f)
        eq = np.round(np.full(steps, 0.9 * limit) * 2.0**f)
        runs[kind] = H.run_m0(H.build_m0(d, "pol", xq, eq), "pol", profile=True)
    fused, euler = runs["fused"], runs["euler"]
    assert fused["calls"]["__aeabi_ldivmod"] == 0, fused
    assert fused["calls"]["__aeabi_idiv"] == steps * (cfg.units * (cfg.ode_unfolds + 1) + 1), fused
    assert sum(euler["calls"].values()) == 0 and euler["division_instructions"] == 0, euler
    assert 0 < fused["division_instructions"] < fused["instructions"]
    assert 0 < euler["instructions"] < fused["instructions"]


# ------------------------------------------------- Cortex-M4 under qemu: one explicit run


@needs_arm
@needs_qemu
def test_m4_rk4_under_qemu_matches_reference(tmp_path, files):
    path = files["rk4_mixed"]
    model = read(path)
    out = tmp_path / "m4"
    export_firmware(path, out, "pol")
    steps = 400
    bound = stability(model)["rk4"]["max_elapsed"]
    xs, el, s0, reset_at = _vectors(np.random.default_rng(3), 4, model.config.n_state, steps, bound)
    H.write_vectors(out, xs, el, s0, reset_at)
    H.write_driver(out, "pol")
    got_y, got_s = H.parse_hex(H.run_qemu(H.build_m4(out, "pol")), steps, 2, model.config.n_state)
    want_y, want_s = H.reference_outputs(model, xs, el, s0, reset_at)
    scale = max(1.0, float(np.abs(want_y).max()))
    assert np.abs(got_y - want_y).max() / scale <= 1e-5
    assert np.abs(got_s - want_s).max() / scale <= 1e-5
