"""ncps.keras exports beyond the plain .keras file (issue 19): ``model.weights.h5`` + ``--spec``
for wired CfC and LTC models, NCP wirings whose seed ncps.keras does not save (the seed from
``--spec``, cross-checked), a ``CfCCell`` ``sparsity_mask``, and one Keras -> C run on a
Cortex-M4 under qemu.

The oracle is ncps.keras on Keras 3 with the torch backend (as in test_keras_export.py);
the weights-file route is checked to give the same model file as the ``.keras`` file.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported

import json  # noqa: E402
import shutil  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
pytest.importorskip("h5py")
from ncps.keras import LTC, CfC, LTCCell  # noqa: E402
from ncps.wirings import NCP, AutoNCP, FullyConnected, Random  # noqa: E402

from edgeliquid import CheckpointError  # noqa: E402
from edgeliquid.cli.main import main  # noqa: E402
from edgeliquid.model.export import export_checkpoint  # noqa: E402
from edgeliquid.model.file import read  # noqa: E402
from edgeliquid.runtime.policy import from_model  # noqa: E402

N_IN, T = 3, 12
RTOL = 1e-5
NCP_ARGS = dict(
    inter_neurons=4,
    command_neurons=3,
    motor_neurons=2,
    sensory_fanout=2,
    inter_fanout=2,
    recurrent_command_synapses=2,
    motor_fanin=2,
)
MASK = np.random.default_rng(1).choice([-1.0, 0.0, 0.5, 1.0], (N_IN + 4, 4)).astype("float32")

# id -> (liquid layer factory, the weights-file spec stating what config.json says)
CASES = {
    "cfc-autoncp": (
        lambda: CfC(AutoNCP(10, 3, seed=5), return_sequences=True),
        {
            "class_name": "CfC",
            "mode": "default",
            "wiring": {"class": "AutoNCP", "units": 10, "output_size": 3, "sparsity_level": 0.5, "seed": 5},
        },
    ),  # fmt: skip
    "cfc-random-nogate": (
        lambda: CfC(Random(7, 3, sparsity_level=0.5, random_seed=3), mode="no_gate", return_sequences=True),
        {
            "class_name": "CfC",
            "mode": "no_gate",
            "wiring": {
                "class": "Random",
                "units": 7,
                "output_dim": 3,
                "sparsity_level": 0.5,
                "random_seed": 3,
            },
        },
    ),  # fmt: skip
    "cfc-fc-pure": (
        lambda: CfC(FullyConnected(5), mode="pure", return_sequences=True),
        {"class_name": "CfC", "mode": "pure", "wiring": {"class": "FullyConnected", "units": 5}},
    ),
    "ltc-autoncp": (
        lambda: LTC(AutoNCP(8, 2, seed=4), return_sequences=True),
        {
            "class_name": "LTC",
            "ode_unfolds": 6,
            "epsilon": 1e-8,
            "input_mapping": "affine",
            "output_mapping": "affine",
            "wiring": {"class": "AutoNCP", "units": 8, "output_size": 2, "seed": 4},
        },
    ),  # fmt: skip
    "ltc-fc-linear": (
        lambda: LTC(
            FullyConnected(5, output_dim=2), input_mapping="linear", ode_unfolds=3, return_sequences=True
        ),
        {
            "class_name": "LTC",
            "ode_unfolds": 3,
            "epsilon": 1e-8,
            "input_mapping": "linear",
            "output_mapping": "affine",
            "wiring": {"class": "FullyConnected", "units": 5, "output_dim": 2},
        },
    ),  # fmt: skip
    "cfc-ncp": (
        lambda: CfC(NCP(**NCP_ARGS, seed=7), return_sequences=True),
        {"class_name": "CfC", "mode": "default", "wiring": {"class": "NCP", **NCP_ARGS, "seed": 7}},
    ),
    "ltc-ncp": (
        lambda: LTC(NCP(**NCP_ARGS, seed=7), return_sequences=True),
        {
            "class_name": "LTC",
            "ode_unfolds": 6,
            "epsilon": 1e-8,
            "input_mapping": "affine",
            "output_mapping": "affine",
            "wiring": {"class": "NCP", **NCP_ARGS, "seed": 7},
        },
    ),  # fmt: skip
    # keras.layers.RNN(LTCCell): the cell's wiring is a bare get_config dict, its class told by its keys
    "ltc-rnn-cell-autoncp": (
        lambda: keras.layers.RNN(LTCCell(AutoNCP(7, 2, seed=2)), return_sequences=True),
        None,
    ),
    "cfc-sparsity-mask": (
        lambda: CfC(4, backbone_units=0, backbone_layers=0, sparsity_mask=MASK, return_sequences=True),
        None,
    ),
}
SEED_SPEC = {"wiring": {"seed": 7}}


def _perturb(model, seed):
    """Move weights off their initial values as training would: Keras' NonNeg ones stay >= 0, and
    LTC erev stays 0 off the wiring's synapses (masked entries get no gradient)."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        a = np.asarray(v.numpy(), np.float64)
        name = v.path.rsplit("/", 1)[-1]
        b = a + rng.normal(0, 0.3, a.shape)
        if name in ("gleak", "cm", "w", "sensory_w"):
            b = np.abs(b)
        if name in ("erev", "sensory_erev"):
            b = np.where(a != 0, b, 0.0)
        v.assign(b.astype(np.float32))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """id -> (keras model, .keras path, exported model file)."""
    tmp = tmp_path_factory.mktemp("kspec")
    keras.utils.set_random_seed(1)
    out = {}
    for i, (cid, (make, _)) in enumerate(CASES.items()):
        model = keras.Sequential([keras.Input((None, N_IN)), make()])
        _perturb(model, i)
        path = tmp / f"{cid}.keras"
        model.save(path)
        onnx_path = tmp / f"{cid}.onnx"
        export_checkpoint(path, onnx_path, spec=SEED_SPEC if cid.endswith("-ncp") else None)
        out[cid] = (model, path, onnx_path)
    return out


def _close(got, want, msg=""):
    got, want = np.atleast_2d(got), np.atleast_2d(want)
    scale = np.maximum(1.0, np.abs(want).max(axis=-1, keepdims=True))
    err = float((np.abs(got - want) / scale).max())
    assert err <= RTOL, f"{msg}: worst relative error {err:.2e}"


def _keras_out(model, xs):
    return np.asarray(model(xs[None]).detach().cpu().numpy(), np.float64)[0]


def _xs(seed=5):
    return np.random.default_rng(seed).normal(0, 1.0, (T, N_IN)).astype(np.float32)


@pytest.mark.parametrize("cid", ["cfc-ncp", "ltc-ncp", "cfc-sparsity-mask", "ltc-rnn-cell-autoncp"])
def test_seeded_ncp_sparsity_mask_rnn_cell_match_keras(built, cid):
    """.keras (+ the NCP's seed) == ncps.keras over a sequence: reference and cpu float32."""
    model, _, onnx_path = built[cid]
    xs = _xs()
    want = _keras_out(model, xs)
    m = read(onnx_path)
    for backend, dt in (("reference", np.float64), ("cpu", np.float32)):
        pol = from_model(m, backend, dt)
        got = np.stack([pol.step(x, 1.0).copy() for x in xs])
        _close(got, want, f"{cid} {backend}")
    if cid == "cfc-sparsity-mask":
        assert m.config.sparse and set(np.unique(m.params["sparsity_mask"])) == {0.0, 1.0}
    else:
        assert m.info["wiring"] == ("AutoNCP" if "autoncp" in cid else "NCP")


@pytest.mark.parametrize("cid", [c for c, (_, spec) in CASES.items() if spec is not None])
def test_weights_file_with_spec_equals_keras_file(built, tmp_path, cid):
    """model.weights.h5 + the spec gives the .keras file's model (config and every parameter)."""
    _, path, onnx_path = built[cid]
    with zipfile.ZipFile(path) as z:
        (tmp_path / "model.weights.h5").write_bytes(z.read("model.weights.h5"))
    out = tmp_path / "w.onnx"
    export_checkpoint(tmp_path / "model.weights.h5", out, spec=CASES[cid][1])
    a, b = read(out), read(onnx_path)
    assert a.config == b.config
    assert sorted(a.params) == sorted(b.params)
    for k in b.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_ncp_seed_through_the_cli(built, tmp_path, capsys):
    """`edgeliquid export model.keras --spec seed.yaml`; without the spec: exit 2, one line naming it."""
    _, path, onnx_path = built["cfc-ncp"]
    spec = tmp_path / "seed.yaml"
    spec.write_text("wiring: {class: NCP, seed: 7}\n")
    out = tmp_path / "cli.onnx"
    assert main(["export", str(path), "--spec", str(spec), "-o", str(out)]) == 0
    for k, v in read(onnx_path).params.items():
        np.testing.assert_array_equal(read(out).params[k], v)
    assert main(["export", str(path), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "seed: null" in err and "--spec" in err and str(path) in err


def _refused(path, tmp, spec, match):
    with pytest.raises(CheckpointError, match=match) as exc:
        export_checkpoint(path, tmp / "out.onnx", spec=spec)
    assert "\n" not in str(exc.value)


def test_ncp_seed_cross_checks(built, tmp_path):
    """What can be checked is: the spec against the file's NCP, the file's neuron lists against the
    rebuilt wiring, and (LTC) erev's exact zeros against the rebuilt synapses."""
    _, cfc_path, _ = built["cfc-ncp"]
    _refused(cfc_path, tmp_path, {"wiring": {"seed": 7, "inter_neurons": 5}}, "inter_neurons: 5 disagrees")
    _refused(cfc_path, tmp_path, {"wiring": {"class": "NCP"}}, "wiring needs seed")
    _refused(cfc_path, tmp_path, {"wiring": {"seed": 7}, "mode": "pure"}, "may only hold")
    _refused(cfc_path, tmp_path, {"wiring": {"seed": -1}}, "seed must be an integer")
    _refused(built["cfc-autoncp"][1], tmp_path, SEED_SPEC, "only gives an NCP wiring's seed.*AutoNCP")
    # neuron lists edited in config.json: no NCP of these sizes numbers its neurons so
    with zipfile.ZipFile(cfc_path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    cell = next(la for la in cfg["config"]["layers"] if la["class_name"] == "CfC")["config"]["cell"]
    cell["config"]["wiring"]["config"]["motor_neurons"] = [7, 8]
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(edited, "w") as z:
        for n, b in members.items():
            z.writestr(n, json.dumps(cfg) if n == "config.json" else b)
    _refused(edited, tmp_path, SEED_SPEC, "motor_neurons \\[7, 8\\] differ from the rebuilt")
    # LTC: a wrong seed puts rebuilt synapses where the trained erev is still exactly 0
    _refused(built["ltc-ncp"][1], tmp_path, {"wiring": {"seed": 8}}, "erev exactly 0.*seed is not the one")
    # the weights-file route needs every NCP argument and the seed
    with zipfile.ZipFile(cfc_path) as z:
        (tmp_path / "model.weights.h5").write_bytes(z.read("model.weights.h5"))
    spec = {"class_name": "CfC", "mode": "default", "wiring": {"class": "NCP", **NCP_ARGS}}
    _refused(tmp_path / "model.weights.h5", tmp_path, spec, "NCP wiring needs seed")


def test_sparsity_mask_refusals(tmp_path):
    """A mask of the wrong shape in config.json is named."""
    model = keras.Sequential([keras.Input((None, N_IN)), CASES["cfc-sparsity-mask"][0]()])
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    layer = next(la for la in cfg["config"]["layers"] if la["class_name"] == "CfC")["config"]
    layer["cell"]["config"]["sparsity_mask"]["config"]["value"] = [[1.0, 0.0]]
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for n, b in members.items():
            z.writestr(n, json.dumps(cfg) if n == "config.json" else b)
    _refused(bad, tmp_path, None, "sparsity_mask: shape \\[1, 2\\], expected \\[7, 4\\]")


@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc and qemu-system-arm needed",
)
def test_keras_ncp_cfc_to_cortex_m4_matches_keras(built, tmp_path):
    """.keras (NCP + seed) -> export -> firmware -> Cortex-M4 under qemu: outputs == Keras."""
    from firmware_export import harness as H

    model, _, onnx_path = built["cfc-ncp"]
    out = tmp_path / "fw"
    assert main(["firmware", str(onnx_path), "-o", str(out), "--name", "kncp"]) == 0
    xs = _xs(3)
    m = read(onnx_path)
    assert m.config.formulation == "keras" and m.config.wired
    H.write_vectors(out, xs, np.ones(T, np.float32), np.zeros(m.config.n_state, np.float32), T + 1)
    H.write_driver(out, "kncp")
    text = H.run_qemu(H.build_m4(out, "kncp"), timeout=600)
    got, _ = H.parse_hex(text, T, m.config.n_outputs, m.config.n_state)
    _close(got, _keras_out(model, xs), "Cortex-M4")
