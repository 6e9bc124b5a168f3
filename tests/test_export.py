"""Exporter: every checkpoint kind ncps users have, and clear errors for the rest."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import perturbed_ncps, run_ncps  # noqa: E402
from ncps import wirings  # noqa: E402
from ncps.torch import LTC, CfC, LTCCell  # noqa: E402

import edgeliquid  # noqa: E402
from edgeliquid import CheckpointError, UnsupportedModelError  # noqa: E402
from edgeliquid.cli.main import main  # noqa: E402
from edgeliquid.model.export import export_checkpoint, read_checkpoint  # noqa: E402


def _agrees(path, module, mixed=False, n_in=4):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(60, n_in)).astype(np.float32).astype(np.float64)
    el = rng.uniform(0.2, 2, 60).astype(np.float32).astype(np.float64)
    want = run_ncps(module, xs, el, mixed, np.float64)
    got = edgeliquid.load(path, backend="reference", dtype=np.float64).run(xs, el)
    np.testing.assert_allclose(got, want, atol=1e-10)


# What ncps.torch.LTC was built with in these tests (its defaults), stated as a spec.
DEFAULTS = {"ode_unfolds": 6, "epsilon": 1e-8, "implicit_param_constraints": True}


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


def test_ltccell_state_dict_needs_motor_neurons_without_output_mapping(tmp_path):
    torch.manual_seed(2)
    w = wirings.FullyConnected(6, 2)
    cell = LTCCell(w, in_features=4, input_mapping="linear", output_mapping="none")
    perturbed_ncps(cell, 2)
    torch.save(cell.state_dict(), tmp_path / "cell.pt")
    spec = {"ode_unfolds": 6, "epsilon": 1e-8, "implicit_param_constraints": False}
    with pytest.raises(CheckpointError, match="give motor_neurons in the spec"):
        export_checkpoint(tmp_path / "cell.pt", tmp_path / "m.onnx", spec=spec)
    model = export_checkpoint(tmp_path / "cell.pt", tmp_path / "m.onnx", spec={**spec, "motor_neurons": 2})
    assert model.config.positivity == "none"
    assert model.config.input_mapping == "linear" and model.config.output_mapping == "none"


def test_dict_checkpoint_with_key(tmp_path, ltc):
    torch.save({"model_state_dict": ltc.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match=r"pass --key"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", spec=DEFAULTS)
    export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", key="model_state_dict", spec=DEFAULTS)
    _agrees(tmp_path / "m.onnx", ltc, mixed=True)
    with pytest.raises(CheckpointError, match=r"key 'weights' not found"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", key="weights")


def test_cfc_is_read_and_other_modules_are_refused_by_name(tmp_path):
    # CfC is converted (tests/test_cfc_export.py has the parity matrix); a CfC state_dict
    # without a spec names what it lacks, as an LTC one does.
    cfc = CfC(4, 8)
    torch.save(cfc.state_dict(), tmp_path / "cfc.pt")
    with pytest.raises(CheckpointError, match=r"does not record mode, activation"):
        export_checkpoint(tmp_path / "cfc.pt", tmp_path / "m.onnx")
    torch.save(cfc, tmp_path / "cfc_whole.pt")
    assert read_checkpoint(tmp_path / "cfc_whole.pt", trust_pickle=True).config.cell == "cfc"
    torch.save(torch.nn.GRUCell(4, 8), tmp_path / "gru.pt")
    with pytest.raises(UnsupportedModelError, match=r"cannot export a torch\.nn\.modules\.rnn\.GRUCell"):
        export_checkpoint(tmp_path / "gru.pt", tmp_path / "m.onnx", trust_pickle=True)


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
    argv = ["export", str(tmp_path / "sd.pt"), "-o", str(tmp_path / "m.onnx"), "--assume-defaults"]
    assert main(argv) == 0
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


# ------------------------------------------------- files that are not checkpoints, bad -o


def _jit_save(module, path):
    import warnings

    with warnings.catch_warnings():  # torch.jit is deprecated, and still what some users have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), path)


def _not_checkpoints():
    """name -> (bytes or a maker, what the error must say)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2)
    json_header = b'{"__metadata__":{}}'
    return {
        "model.onnx": (None, r"is an ONNX model file, not a torch checkpoint"),
        "random.bin": (
            bytes(range(7, 250)) * 4,
            r"is not a torch checkpoint \(unknown format, first bytes 07 08",
        ),
        "notes.txt": (b"ode_unfolds: 6\nepsilon: 1.0e-8\n", r"is a text file, not a torch checkpoint"),
        "other.zip": ("zip", r"is a zip archive without data.pkl"),
        "plain.pkl": ("pickle", r"is a plain Python pickle \(pickle.dump\), not a torch checkpoint"),
        "empty.pt": (b"", r"is empty \(0 bytes\)"),
        "w.safetensors": (len(json_header).to_bytes(8, "little") + json_header, r"is a safetensors file"),
        "keras.h5": (b"\x89HDF\r\n\x1a\n" + bytes(100), r"is an HDF5 file"),
        "script.pt": (lambda p: _jit_save(lin, p), r"is a TorchScript archive"),
    }


@pytest.mark.parametrize("name", sorted(_not_checkpoints()))
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, ltc, capsys, name):
    import pickle
    import zipfile

    content, want = _not_checkpoints()[name]
    f = tmp_path / name
    if name == "model.onnx":
        edgeliquid.export_module(ltc, f)
    elif content == "zip":
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("readme.txt", "not torch")
    elif content == "pickle":
        f.write_bytes(pickle.dumps({"gleak": [1.0, 2.0]}))
    elif callable(content):
        content(f)
    else:
        f.write_bytes(content)
    assert main(["export", str(f), "-o", str(tmp_path / "out.onnx"), "--assume-defaults"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"edgeliquid export: error: {f}: "), err
    assert re.search(want, err), err
    assert "--trust-pickle" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_legacy_torch_format_is_still_read(tmp_path, ltc):
    torch.save(ltc.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    export_checkpoint(tmp_path / "old.pt", tmp_path / "m.onnx", spec=DEFAULTS)
    _agrees(tmp_path / "m.onnx", ltc, mixed=True)


def test_bad_output_paths_are_refused_before_any_work(tmp_path, ltc, capsys):
    torch.save(ltc.state_dict(), tmp_path / "sd.pt")
    sd = str(tmp_path / "sd.pt")
    cases = {
        str(
            tmp_path / "no" / "such" / "m.onnx"
        ): r"cannot write the model file: folder '.*no/such' does not exist",
        str(tmp_path / "sd.pt" / "m.onnx"): r"folder '.*sd.pt' is not a folder",
        str(tmp_path): r"is a folder; name the .onnx file to write",
        sd: r"is the checkpoint itself",
    }
    for out, want in cases.items():
        assert main(["export", sd, "-o", out, "--assume-defaults"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"edgeliquid export: error: {out}: "), err
        assert re.search(want, err), err
    assert torch.load(sd, weights_only=True).keys() == ltc.state_dict().keys()  # untouched
    with pytest.raises(edgeliquid.EdgeliquidError, match="does not exist"):
        edgeliquid.export_module(ltc, tmp_path / "missing" / "m.onnx")


def test_cli_errors_are_one_line_in_a_real_process(tmp_path):
    import subprocess
    import sys

    (tmp_path / "random.bin").write_bytes(bytes(range(256)))
    r = subprocess.run(
        [sys.executable, "-m", "edgeliquid", "export", str(tmp_path / "random.bin"), "-o", "x/y.onnx"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "x/y.onnx" in r.stderr
