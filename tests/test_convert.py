"""``edgeliquid convert``: same weights, new integration, provenance kept across conversions."""

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeliquid.cli import args as ca
from edgeliquid.cli.main import main
from edgeliquid.errors import EdgeliquidError, ModelFormatError
from edgeliquid.model.cell import SOLVER_NAMES
from edgeliquid.model.checks import MAX_UNFOLDS
from edgeliquid.model.convert import (
    CONVERTED_FROM_KEY,
    TRAINED_SOLVER_KEY,
    TRAINED_UNFOLDS_KEY,
    convert,
    convert_file,
    trained_integration,
)
from edgeliquid.model.file import read, save
from edgeliquid.model.guarantees import stability
from edgeliquid.runtime.policy import from_model

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
CFC = ROOT / "edgeliquid" / "data" / "cartpole_cfc.onnx"


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cli_choices_agree_with_the_model_package():
    assert ca.SOLVER_CHOICES == SOLVER_NAMES and ca.UNFOLDS_MAX == MAX_UNFOLDS


def test_round_trip_keeps_weights_and_records_provenance(tmp_path):
    out = tmp_path / "rk4.onnx"
    src, conv = convert_file(CARTPOLE, out, "rk4", 3)
    back = read(out)
    assert (back.config.solver, back.config.ode_unfolds) == ("rk4", 3)
    assert back.config.replace(solver=src.config.solver, ode_unfolds=6) == src.config
    assert set(back.params) == set(src.params)
    for k in src.params:
        np.testing.assert_array_equal(back.params[k], src.params[k])
    assert back.roles == src.roles
    assert back.info[CONVERTED_FROM_KEY] == sha(CARTPOLE)
    assert (back.info[TRAINED_SOLVER_KEY], back.info[TRAINED_UNFOLDS_KEY]) == (
        "fused_semi_implicit_euler",
        "6",
    )
    for k, v in src.info.items():  # the checkpoint's provenance, names, normalisation survive
        assert back.info[k] == v
    assert trained_integration(back) == ("fused_semi_implicit_euler", 6)
    # the file computes the new integration: onnxruntime on it == the reference with rk4 x 3
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (20, 4)).astype(np.float32)
    el = np.full(20, 0.02)  # within rk4 x 3's bound for this stiff policy
    assert el.max() <= stability(back)["rk4"]["max_elapsed"]
    want = from_model(back, "reference", np.float64).run(x, el)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    state = np.zeros((1, back.config.n_state), np.float32)
    got = []
    for t in range(20):
        y, state = sess.run(
            None, {"x": x[t : t + 1], "state": state, "elapsed": np.full((1, 1), el[t], np.float32)}
        )
        got.append(y[0])
    np.testing.assert_allclose(np.array(got), want, atol=1e-5)


def test_double_conversion_keeps_the_trained_integration(tmp_path):
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    convert_file(CARTPOLE, a, "rk4", 2)
    convert_file(a, b, "explicit_euler", None)
    convert_file(b, c, None, 9)
    mb, mc = read(b), read(c)
    assert (mb.config.solver, mb.config.ode_unfolds) == ("explicit_euler", 2)  # unfolds kept
    assert (mc.config.solver, mc.config.ode_unfolds) == ("explicit_euler", 9)  # solver kept
    for m in (mb, mc):
        assert trained_integration(m) == ("fused_semi_implicit_euler", 6)
    assert mb.info[CONVERTED_FROM_KEY] == sha(a) and mc.info[CONVERTED_FROM_KEY] == sha(b)
    assert mc.info["source_sha256"] == read(CARTPOLE).info["source_sha256"]  # the checkpoint's


def test_in_memory_convert_drops_a_stale_source_hash():
    m = read(CARTPOLE)
    once = convert(m, "rk4", 2, source_sha256="ab" * 32)
    twice = convert(once, "explicit_euler", 4)
    assert CONVERTED_FROM_KEY not in twice.info
    assert trained_integration(twice) == ("fused_semi_implicit_euler", 6)
    assert m.config.solver == "fused_semi_implicit_euler" and CONVERTED_FROM_KEY not in m.info  # untouched


@pytest.mark.parametrize(
    "solver, unfolds, match",
    [
        ("rk5", 3, "unknown"),
        ("rk4", 0, "1..1000"),
        ("rk4", MAX_UNFOLDS + 1, "1..1000"),
        ("rk4", 2.0, "integer"),
    ],
)
def test_bad_arguments_are_refused(solver, unfolds, match):
    with pytest.raises(EdgeliquidError, match=match):
        convert(read(CARTPOLE), solver, unfolds)


def test_cfc_is_refused_with_a_reason(tmp_path):
    with pytest.raises(EdgeliquidError, match="CfC model has no ODE solver"):
        convert_file(CFC, tmp_path / "x.onnx", "rk4", 2)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    "key, value, match",
    [
        (TRAINED_SOLVER_KEY, "leapfrog", "trained_solver='leapfrog' unknown"),
        (TRAINED_UNFOLDS_KEY, "-3", "trained_ode_unfolds='-3' is not a non-negative integer"),
        (TRAINED_UNFOLDS_KEY, "0", "outside 1..1000"),
    ],
)
def test_malformed_provenance_is_named(tmp_path, key, value, match):
    m = convert(read(CARTPOLE), "rk4", 2)
    m.info[key] = value
    save(m, tmp_path / "bad.onnx")
    with pytest.raises(ModelFormatError, match=match):
        convert_file(tmp_path / "bad.onnx", tmp_path / "out.onnx", "rk4", 3)


def test_half_a_provenance_pair_is_refused():
    m = convert(read(CARTPOLE), "rk4", 2)
    del m.info[TRAINED_UNFOLDS_KEY]
    with pytest.raises(ModelFormatError, match="trained_ode_unfolds is missing"):
        trained_integration(m)


def test_cli_prints_what_it_did_and_the_stability_bound(tmp_path, capsys):
    out = tmp_path / "e.onnx"
    assert (
        main(["convert", str(CARTPOLE), "-o", str(out), "--solver", "explicit_euler", "--unfolds", "4"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"read {CARTPOLE}") and "fused_semi_implicit_euler, 6 unfolds" in lines[0]
    assert "explicit_euler, 4 unfolds" in lines[1] and "trained with fused_semi_implicit_euler, 6" in lines[1]
    bound = stability(read(out))["explicit_euler"]["max_elapsed"]
    assert f"elapsed <= {bound:.4g}" in lines[2]
    assert (
        main(["convert", str(out), "-o", str(tmp_path / "f.onnx"), "--solver", "fused_semi_implicit_euler"])
        == 0
    )
    assert "unconditionally stable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--unfolds", "2", "-o", "{tmp}/no/such/dir/x.onnx"], "does not exist"),
        (["--unfolds", "2", "-o", "{tmp}"], "is a folder"),
        (["-o", "{tmp}/x.onnx"], "give --solver and/or --unfolds"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, match):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["convert", str(CARTPOLE), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeliquid convert: error:") and match in err and err.count("\n") == 1


def test_cli_refuses_the_input_as_output(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    src.write_bytes(CARTPOLE.read_bytes())
    assert main(["convert", str(src), "-o", str(src), "--unfolds", "2"]) == 2
    assert "is the input model itself" in capsys.readouterr().err
    assert sha(src) == sha(CARTPOLE)


@pytest.mark.parametrize("bad", ["0", "1001", "x"])
def test_cli_unfolds_out_of_range_is_an_argparse_error(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", str(CARTPOLE), "-o", str(tmp_path / "x.onnx"), "--unfolds", bad])
    assert e.value.code == 2 and "--unfolds" in capsys.readouterr().err
