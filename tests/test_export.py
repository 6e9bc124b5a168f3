"""Exporter: every checkpoint kind ncps users have, and clear errors for the rest."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import perturbed_ncps, run_ncps  # noqa: E402
from ncps import wirings  # noqa: E402
from ncps.torch import LTC, CfC, LTCCell  # noqa: E402

import edgeliquid  # noqa: E402
from edgeliquid import CheckpointError, UnsupportedModelError  # noqa: E402
from edgeliquid.cli import main  # noqa: E402
from edgeliquid.export import export_checkpoint  # noqa: E402


def _agrees(path, module, mixed=False, n_in=4):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(60, n_in)).astype(np.float32).astype(np.float64)
    el = rng.uniform(0.2, 2, 60).astype(np.float32).astype(np.float64)
    want = run_ncps(module, xs, el, mixed, np.float64)
    got = edgeliquid.load(path, backend="reference", dtype=np.float64).run(xs, el)
    np.testing.assert_allclose(got, want, atol=1e-10)


@pytest.fixture()
def ltc():
    torch.manual_seed(0)
    return perturbed_ncps(LTC(4, wirings.AutoNCP(10, 2), mixed_memory=True), 0)


def test_pickled_module_needs_trust(tmp_path, ltc):
    ck = tmp_path / "whole.pt"
    torch.save(ltc, ck)
    with pytest.raises(CheckpointError, match=r"pickled Python object.*--trust-pickle"):
        export_checkpoint(ck, tmp_path / "m.onnx")
    model = export_checkpoint(ck, tmp_path / "m.onnx", trust_pickle=True)
    assert model.roles.count("command") > 0 and model.config.mixed_memory
    _agrees(tmp_path / "m.onnx", ltc, mixed=True)


def test_state_dict_with_spec(tmp_path):
    torch.manual_seed(1)
    m = perturbed_ncps(
        LTC(
            4, wirings.NCP(4, 3, 2, 2, 2, 1, 2), ode_unfolds=3, epsilon=1e-6, implicit_param_constraints=False
        ),
        1,
    )
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "spec.yaml").write_text(
        "ode_unfolds: 3\nepsilon: 1.0e-6\nimplicit_param_constraints: false\n"
    )
    model = export_checkpoint(tmp_path / "sd.pt", tmp_path / "m.onnx", spec=tmp_path / "spec.yaml")
    assert model.config.positivity == "none" and model.config.ode_unfolds == 3
    assert model.roles[:2] == ["motor", "motor"] and "command" in model.roles
    _agrees(tmp_path / "m.onnx", m)


def test_ltccell_state_dict_defaults_to_no_constraint(tmp_path):
    torch.manual_seed(2)
    w = wirings.FullyConnected(6, 2)
    cell = LTCCell(w, in_features=4, input_mapping="linear", output_mapping="none")
    perturbed_ncps(cell, 2)
    torch.save(cell.state_dict(), tmp_path / "cell.pt")
    with pytest.raises(CheckpointError, match="give motor_neurons in the spec"):
        export_checkpoint(tmp_path / "cell.pt", tmp_path / "m.onnx")
    model = export_checkpoint(tmp_path / "cell.pt", tmp_path / "m.onnx", spec={"motor_neurons": 2})
    assert model.config.positivity == "none"  # LTCCell's default
    assert model.config.input_mapping == "linear" and model.config.output_mapping == "none"


def test_dict_checkpoint_with_key(tmp_path, ltc):
    torch.save({"model_state_dict": ltc.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match=r"pass --key"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", key="model_state_dict")
    _agrees(tmp_path / "m.onnx", ltc, mixed=True)
    with pytest.raises(CheckpointError, match=r"key 'weights' not found"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", key="weights")


def test_cfc_is_refused_by_name(tmp_path):
    cfc = CfC(4, 8)
    torch.save(cfc.state_dict(), tmp_path / "cfc.pt")
    with pytest.raises(UnsupportedModelError, match="CfC"):
        export_checkpoint(tmp_path / "cfc.pt", tmp_path / "m.onnx")
    torch.save(cfc, tmp_path / "cfc_whole.pt")
    with pytest.raises(UnsupportedModelError, match="CfC"):
        export_checkpoint(tmp_path / "cfc_whole.pt", tmp_path / "m.onnx", trust_pickle=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_gets_clear_error(tmp_path, ltc, damage):
    ck = tmp_path / "bad.pt"
    torch.save(ltc.state_dict(), ck)
    data = ck.read_bytes()
    ck.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x80\x02junk" * 50, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match=r"bad.pt: "):
        export_checkpoint(ck, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_inspect_bench(tmp_path, ltc, capsys):
    torch.save(ltc.state_dict(), tmp_path / "sd.pt")
    assert main(["export", str(tmp_path / "sd.pt"), "-o", str(tmp_path / "m.onnx")]) == 0
    assert main(["inspect", str(tmp_path / "m.onnx"), "--json"]) == 0
    import json

    out = capsys.readouterr().out
    d = json.loads(out[out.index("{") :])
    assert d["units"] == 10 and len(d["neurons"]) == 10
    assert all(n["tau_min"] <= (n["tau_max"] or np.inf) for n in d["neurons"])
    assert main(["bench", str(tmp_path / "m.onnx"), "--steps", "300", "--batch", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"cpu", "reference", "onnxruntime", "ncps_torch"} <= set(r["peers"])
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
