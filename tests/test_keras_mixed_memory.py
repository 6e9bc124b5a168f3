"""ncps.keras ``mixed_memory=True`` (issue 19): the ``input`` coupling, checked against ncps.keras.

ncps.keras's ``MixedMemoryRNN`` runs the LSTM on x and gives the cell the LSTM's output as its
*input*, keeping the cell's own state; ncps.torch's mixed memory makes that output the cell's
*state*. The file says which (``edgeliquid.mixed_memory_coupling``). The oracle is ncps.keras on
Keras 3 with the torch backend; the exported file is run by the numpy reference, the cpu
kernels (step, run, batch, the node's control_step), onnxruntime, the CUDA simulator and the
float C (host gcc). A torch mixed-memory file must still compute ncps.torch's coupling.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidia0"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
pytest.importorskip("h5py")
import onnxruntime as ort  # noqa: E402
from ncps.keras import LTC, CfC  # noqa: E402
from ncps.wirings import AutoNCP, FullyConnected  # noqa: E402
from test_keras_export import _close, _perturb  # noqa: E402

from edgeliquid import CheckpointError, ModelFormatError  # noqa: E402
from edgeliquid.cli.main import main  # noqa: E402
from edgeliquid.model.export import export_checkpoint, export_module  # noqa: E402
from edgeliquid.model.file import read, read_bytes  # noqa: E402
from edgeliquid.runtime import cfc_kernels, kernels  # noqa: E402
from edgeliquid.runtime.policy import from_model  # noqa: E402

N_IN, T, B = 3, 10, 3


def _cases():
    """id -> (pre layers, liquid layer, post layers): LTC and CfC, unwired and wired."""
    return {
        "ltc-fc-rescale": (
            [keras.layers.Rescaling([0.5, 2.0, -1.0], offset=0.1)],
            LTC(FullyConnected(5, output_dim=2), mixed_memory=True, ode_unfolds=3, return_sequences=True),
            [],
        ),
        "ltc-autoncp": ([], LTC(AutoNCP(8, 2), mixed_memory=True, return_sequences=True), []),
        "cfc-bb1-rescale-dense": (
            [keras.layers.Rescaling(0.7, offset=-0.2)],
            CfC(6, backbone_units=8, backbone_layers=1, mixed_memory=True, return_sequences=True),
            [keras.layers.Dense(2)],
        ),
        "cfc-wired-autoncp": ([], CfC(AutoNCP(10, 3), mixed_memory=True, return_sequences=True), []),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """id -> (keras model, liquid layer, .keras path, exported file, its model)."""
    tmp = tmp_path_factory.mktemp("kmm")
    keras.utils.set_random_seed(1)
    out = {}
    for i, (cid, (pre, liquid, post)) in enumerate(_cases().items()):
        model = keras.Sequential([keras.Input((None, N_IN)), *pre, liquid, *post])
        _perturb(model, 100 + i)
        path = tmp / f"{cid}.keras"
        model.save(path)
        onnx_path = tmp / f"{cid}.onnx"
        export_checkpoint(path, onnx_path)
        out[cid] = (model, liquid, path, onnx_path, read(onnx_path))
    return out


def _keras(model, xs):
    """The Keras model on [B, T, I] -> [B, T, M] (float64)."""
    return np.asarray(model(xs).detach().cpu().numpy(), np.float64)


def _ort(path, xs, es):
    """onnxruntime over [T, B, I] with elapsed [T, B] -> [T, B, M]."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n_state = next(i for i in sess.get_inputs() if i.name == "state").shape[1]
    state = np.zeros((xs.shape[1], n_state), np.float32)
    ys = []
    for t in range(xs.shape[0]):
        y, state = sess.run(None, {"x": xs[t], "state": state, "elapsed": es[t][:, None].astype(np.float32)})
        ys.append(y)
    return np.stack(ys)


CASE_IDS = ["ltc-fc-rescale", "ltc-autoncp", "cfc-bb1-rescale-dense", "cfc-wired-autoncp"]


@pytest.mark.parametrize("cid", CASE_IDS)
def test_batch_sequence_matches_keras(built, cid):
    """B sequences through the whole Keras model at elapsed 1 == reference, cpu (step, run,
    batch step, batch run) and onnxruntime on the exported file, float32 within 1e-5."""
    model, _, _, onnx_path, m = built[cid]
    assert m.config.mixed_memory and m.config.mixed_memory_coupling == "input"
    assert m.config.n_inputs == N_IN and m.config.n_state == 2 * m.config.units
    xs = np.random.default_rng(5).normal(0, 1.0, (B, T, N_IN)).astype(np.float32)
    want = _keras(model, xs)  # [B, T, M]
    es = np.ones((T, B))
    xtb = np.ascontiguousarray(xs.transpose(1, 0, 2))  # [T, B, I]
    for backend, dt in (("reference", np.float64), ("cpu", np.float32)):
        one = from_model(m, backend, dt)
        _close(one.run(xs[0].astype(dt), np.ones(T)), want[0], f"{cid} {backend} run")
        one.reset()
        _close(
            np.stack([one.step(x, 1.0).copy() for x in xs[1].astype(dt)]), want[1], f"{cid} {backend} step"
        )
        many = from_model(m, backend, dt, batch=B)
        got = many.run(xtb.astype(dt), es)
        for b in range(B):
            _close(got[:, b], want[b], f"{cid} {backend} batch run row {b}")
        many.reset()
        got = np.stack([many.step(x, 1.0).copy() for x in xtb.astype(dt)])
        for b in range(B):
            _close(got[:, b], want[b], f"{cid} {backend} batch step row {b}")
    got = _ort(onnx_path, xtb, es)
    for b in range(B):
        _close(got[:, b], want[b], f"{cid} onnxruntime row {b}")


@pytest.mark.parametrize("cid", ["ltc-autoncp", "cfc-wired-autoncp"])
def test_control_step_matches_keras(built, cid):
    """The node's fused control_step (identity channel maps) == Keras, step by step."""
    model, _, _, _, m = built[cid]
    xs = np.random.default_rng(6).normal(0, 1.0, (T, N_IN)).astype(np.float32)
    want = _keras(model, xs[None])[0]
    policy = from_model(m, "cpu", np.float32)
    k = cfc_kernels if getattr(m.config, "cell", "ltc") == "cfc" else kernels
    n, mo = m.config.n_inputs, m.config.n_outputs
    inf = np.inf
    chan = np.concatenate(
        [np.full(n, -inf), np.full(n, inf), np.zeros(n), np.ones(n)]
        + [
            np.ones(mo),
            np.zeros(mo),
            np.full(mo, -inf),
            np.full(mo, inf),
            np.full(mo, inf),
            np.zeros(mo),
            np.zeros(mo),
        ]
        + [np.zeros(1)]
    )
    xbuf = np.zeros(n, np.float32)
    u0 = 4 * n + kernels.CH_U * mo
    for t in range(T):
        status = k.control_step(
            xs[t].astype(np.float64), 1.0, 0.01, chan, xbuf, policy._fp, policy._ip, policy._work
        )
        assert status == kernels.STATUS_OK
        _close(chan[u0 : u0 + mo], want[t], f"{cid} control_step t={t}")


def _keras_cell_irregular(liquid, xs, es):
    """ncps.keras's MixedMemoryRNN over (x, t) pairs, one row, Keras state order [c, h].

    ``MixedMemoryRNN.call`` means to pass the pair's t on to the cell (``ct_input =
    (ct_input,) + sequences[1:]``) but cannot take a pair (its ``matmul(sequences, ...)``
    stacks x and t and fails), so this runs its LSTM lines as written, with Keras ops on its
    own variables, and ncps.keras's cell on (LSTM output, t)."""
    import torch

    mm, ops = liquid.cell, keras.ops
    c, h = torch.zeros((1, mm.flat_size)), torch.zeros((1, mm.flat_size))
    out = []
    for x, e in zip(xs, es, strict=True):
        z = ops.matmul(torch.tensor(x[None]), mm.input_kernel) + ops.matmul(h, mm.recurrent_kernel) + mm.bias
        i, ig, fg, og = ops.split(z, 4, axis=-1)
        c = c * keras.activations.sigmoid(fg + mm.forget_gate_bias) + ops.tanh(i) * keras.activations.sigmoid(
            ig
        )
        o = ops.tanh(c) * keras.activations.sigmoid(og)
        y, hs = mm.rnn_cell((o, torch.tensor([[e]])), [h])
        h = hs[0] if isinstance(hs, list | tuple) else hs
        out.append(np.asarray(y.detach().numpy(), np.float64)[0])
    return np.stack(out)


def test_irregular_elapsed_matches_keras_cell(built):
    """ncps.keras's mixed-memory CfC cell on (x, t) pairs == the file with elapsed = t."""
    cid = "cfc-wired-autoncp"  # the cell alone: no layers folded around it
    _, liquid, _, onnx_path, m = built[cid]
    rng = np.random.default_rng(9)
    xs = rng.normal(0, 1.0, (T, N_IN)).astype(np.float32)
    es = rng.uniform(0.05, 3.0, T).astype(np.float32)
    want = _keras_cell_irregular(liquid, xs, es)
    for backend, dt in (("reference", np.float64), ("cpu", np.float32)):
        _close(from_model(m, backend, dt).run(xs.astype(dt), es), want, f"{cid} {backend}")
    _close(_ort(onnx_path, xs[:, None], es[:, None])[:, 0], want, f"{cid} onnxruntime")


@pytest.mark.parametrize("cid", ["ltc-autoncp", "cfc-wired-autoncp"])
def test_cuda_simulator_matches_reference(built, cid):
    """The CUDA kernels (the simulator without a GPU) compute the ncps.keras coupling."""
    pytest.importorskip("numba.cuda")
    _, _, _, _, m = built[cid]
    rng = np.random.default_rng(11)
    xs = rng.normal(0, 1.0, (3, 2, N_IN)).astype(np.float32)
    es = rng.uniform(0.2, 2.0, (3, 2)).astype(np.float32)
    want = from_model(m, "reference", np.float64, batch=2).run(xs.astype(np.float64), es)
    got = from_model(m, "cuda", np.float32, batch=2).run(xs, es)
    for b in range(2):
        _close(got[:, b], want[:, b], f"{cid} cuda row {b}")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("cid", ["ltc-fc-rescale", "cfc-wired-autoncp"])
def test_float_c_matches_keras(built, cid, tmp_path):
    """edgeliquid firmware (float32 C) built with host gcc == Keras."""
    from firmware_export import harness as H

    model, _, _, onnx_path, m = built[cid]
    out = tmp_path / "fw"
    assert main(["firmware", str(onnx_path), "-o", str(out), "--name", "kmm"]) == 0
    xs = np.random.default_rng(3).normal(0, 1.0, (T, N_IN)).astype(np.float32)
    H.write_vectors(out, xs, np.ones(T, np.float32), np.zeros(m.config.n_state, np.float32), T + 1)
    H.write_driver(out, "kmm")
    exe = H.build_host(out, "kmm")
    text = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=120).stdout
    got, _ = H.parse_hex(text, T, m.config.n_outputs, m.config.n_state)
    _close(got, _keras(model, xs[None])[0], f"{cid} host C")


def test_fixed_point_firmware_refuses(built, tmp_path, capsys):
    _, _, _, onnx_path, _ = built["ltc-autoncp"]
    assert main(["firmware", str(onnx_path), "-o", str(tmp_path / "fx"), "--name", "k", "--fixed-point"]) == 2
    assert "does not support mixed_memory" in capsys.readouterr().err


# ------------------------------------------------------------------------ torch coupling


@pytest.mark.parametrize("cell", ["ltc", "cfc"])
def test_torch_mixed_memory_keeps_the_state_coupling(tmp_path, cell):
    """An ncps.torch mixed-memory module: the file says ``state`` and computes ncps.torch; a file
    without the key (written before it existed) reads as ``state`` and computes the same."""
    import torch
    from helpers import perturbed_ncps, run_ncps
    from ncps.torch import LTC as TorchLTC
    from ncps.torch import CfC as TorchCfC

    torch.manual_seed(0)
    if cell == "ltc":
        module = TorchLTC(N_IN, AutoNCP(8, 2), mixed_memory=True, ode_unfolds=3)
    else:
        module = TorchCfC(N_IN, 6, mixed_memory=True, backbone_units=8, backbone_layers=1)
    perturbed_ncps(module, 3)
    path = tmp_path / "t.onnx"
    export_module(module, path)
    m = read(path)
    assert m.config.mixed_memory_coupling == "state"
    rng = np.random.default_rng(4)
    xs = rng.normal(0, 1.0, (T, N_IN)).astype(np.float32)
    es = rng.uniform(0.3, 2.0, T)
    want = run_ncps(module, xs, es, True, np.float32)
    old = onnx.load(str(path))
    keep = [p for p in old.metadata_props if p.key != "edgeliquid.mixed_memory_coupling"]
    assert len(keep) == len(old.metadata_props) - 1
    del old.metadata_props[:]
    old.metadata_props.extend(keep)
    m_old = read_bytes(old.SerializeToString(), "old.onnx")
    assert m_old.config == m.config
    for mm in (m, m_old):
        for backend, dt in (("reference", np.float64), ("cpu", np.float32)):
            _close(from_model(mm, backend, dt).run(xs.astype(dt), es), want, f"torch {cell} {backend}")
    _close(_ort(path, xs[:, None], es[:, None])[:, 0], want, f"torch {cell} onnxruntime")


def test_loader_refuses_a_bad_coupling(built):
    _, _, _, onnx_path, _ = built["ltc-autoncp"]
    for value, match in (("bogus", "mixed_memory_coupling 'bogus'"), ("", "mixed_memory_coupling ''")):
        m = onnx.load(str(onnx_path))
        next(p for p in m.metadata_props if p.key == "edgeliquid.mixed_memory_coupling").value = value
        with pytest.raises(ModelFormatError, match=match):
            read_bytes(m.SerializeToString(), "bad.onnx")
    # "input" on a file without mixed memory
    m = onnx.load(str(built["cfc-wired-autoncp"][3]))
    for p in m.metadata_props:
        if p.key == "edgeliquid.mixed_memory":
            p.value = "false"
    with pytest.raises(ModelFormatError, match="'input' but mixed_memory is false"):
        read_bytes(m.SerializeToString(), "bad.onnx")


# ------------------------------------------------------------------------------ export


def _rewrite_config(src, dst, change):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    change(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return dst


def test_forget_gate_bias_other_than_one_is_refused(built, tmp_path):
    path = built["cfc-wired-autoncp"][2]

    def bias(cfg):
        layer = next(la for la in cfg["config"]["layers"] if la["class_name"] == "CfC")
        assert layer["config"]["cell"]["class_name"] == "MixedMemoryRNN"
        layer["config"]["cell"]["config"]["forget_gate_bias"] = 2.0

    bad = _rewrite_config(path, tmp_path / "bias.keras", bias)
    with pytest.raises(CheckpointError, match="forget_gate_bias 2.0") as exc:
        export_checkpoint(bad, tmp_path / "o.onnx")
    assert "\n" not in str(exc.value) and str(bad) in str(exc.value)


def test_weights_file_with_spec_equals_keras_file(built, tmp_path):
    """model.weights.h5 + a spec with mixed_memory: true exports what the .keras file does."""
    _, _, path, onnx_path, m = built["cfc-bb1-rescale-dense"]
    with zipfile.ZipFile(path) as z:
        (tmp_path / "model.weights.h5").write_bytes(z.read("model.weights.h5"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "class_name: CfC\nunits: 6\nmode: default\nactivation: lecun_tanh\nbackbone_units: 8\n"
        "backbone_layers: 1\nmixed_memory: true\n"
    )
    out = tmp_path / "w.onnx"
    assert main(["export", str(tmp_path / "model.weights.h5"), "--spec", str(spec), "-o", str(out)]) == 0
    a = read(out)
    assert a.config == m.config.replace(proj_size=0)  # no Dense head on this route
    for k in a.params:
        if not k.startswith("lstm.input_map"):  # the .keras file folded its Rescaling in there
            np.testing.assert_array_equal(a.params[k], m.params[k], err_msg=k)
    spec.write_text(spec.read_text() + "forget_gate_bias: 0.5\n")
    with pytest.raises(CheckpointError, match="forget_gate_bias 0.5"):
        export_checkpoint(tmp_path / "model.weights.h5", tmp_path / "x.onnx", spec=spec)
