"""CfC export: ncps CfC / CfCCell / WiredCfCCell -> CfCModel, checked against ncps itself.

The oracle is the ncps module (float64) stepped over irregular elapsed times; the exported
model is stepped by the numpy reference (the CfC spec). The matrix is a pairwise-style
selection, not the cross product: every mode, backbone depth, activation, wiring, class,
mixed memory, projection and export route appears, each in several combinations.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import irregular_elapsed, perturbed_ncps  # noqa: E402
from ncps import wirings  # noqa: E402
from ncps.torch import LTC, CfC, CfCCell, WiredCfCCell  # noqa: E402

from edgeliquid import CheckpointError, UnsupportedModelError  # noqa: E402
from edgeliquid.cli.main import main  # noqa: E402
from edgeliquid.model.export import (  # noqa: E402
    AssumedDefaultWarning,
    export_checkpoint,
    export_module,
    load_spec,
    model_from_module,
    model_from_state_dict,
    read_checkpoint,
)
from edgeliquid.model.file import read  # noqa: E402
from edgeliquid.runtime.cfc_reference import CfCReferenceCell  # noqa: E402

N_IN = 4
WIRINGS = {
    "NCP": lambda: wirings.NCP(4, 3, 2, 2, 2, 1, 2),
    "AutoNCP": lambda: wirings.AutoNCP(10, 3),
    "Random": lambda: wirings.Random(7, 3, sparsity_level=0.5),
    "FullyConnected": lambda: wirings.FullyConnected(6, 2),
}


def _case(kind, mode, route, wiring=None, layers=1, act="lecun_tanh", dropout=0.0, mixed=False, proj=None,
          units=6, bu=16, mask=False, steps=120):  # fmt: skip
    return dict(kind=kind, mode=mode, route=route, wiring=wiring, layers=layers, act=act, dropout=dropout,
                mixed=mixed, proj=proj, units=units, bu=bu, mask=mask, steps=steps)  # fmt: skip


# id -> case. Every value of every axis appears; see the module docstring.
CASES = {
    "cfc-default-bb1-lecun-128": _case("CfC", "default", "state_dict", bu=None),
    "cfc-nogate-bb2-silu-mixed-proj-long": _case(
        "CfC", "no_gate", "pickle", layers=2, act="silu", mixed=True, proj=3, steps=2000
    ),
    "cfc-pure-bb2-relu-proj": _case("CfC", "pure", "state_dict", layers=2, act="relu", proj=2),
    "cfc-default-bb0-mixed": _case("CfC", "default", "module", layers=0, mixed=True),
    "cfc-nogate-bb3-gelu-dropout-proj": _case(
        "CfC", "no_gate", "state_dict", layers=3, act="gelu", dropout=0.3, proj=4
    ),
    "cfc-pure-bb1-tanh-mixed-proj": _case("CfC", "pure", "pickle", act="tanh", mixed=True, proj=1),
    "cfc-default-bb2-gelu-dropout-mixed": _case(
        "CfC", "default", "module", layers=2, act="gelu", dropout=0.2, mixed=True, proj=2
    ),
    "cell-default-bb2-tanh": _case("CfCCell", "default", "state_dict", layers=2, act="tanh"),
    "cell-nogate-bb1-gelu": _case("CfCCell", "no_gate", "pickle", act="gelu"),
    "cell-pure-bb0": _case("CfCCell", "pure", "module", layers=0),
    "cell-pure-bb1-lecun": _case("CfCCell", "pure", "state_dict"),
    "cell-default-bb3-relu-dropout": _case("CfCCell", "default", "pickle", layers=3, act="relu", dropout=0.5),
    "cell-mask-bb0": _case("CfCCell", "no_gate", "state_dict", layers=0, mask=True),
    "cell-mask-bb1-silu": _case("CfCCell", "default", "pickle", act="silu", mask=True),
    "cfc-ncp-default-mixed-proj": _case("CfC", "default", "state_dict", wiring="NCP", mixed=True, proj=2),
    "cfc-autoncp-nogate": _case("CfC", "no_gate", "pickle", wiring="AutoNCP"),
    "cfc-random-pure-mixed": _case("CfC", "pure", "state_dict", wiring="Random", mixed=True),
    "cfc-fc-default": _case("CfC", "default", "module", wiring="FullyConnected"),
    "cfc-autoncp-pure-mixed-proj": _case("CfC", "pure", "module", wiring="AutoNCP", mixed=True, proj=3),
    "wired-ncp-pure": _case("WiredCfCCell", "pure", "pickle", wiring="NCP"),
    "wired-autoncp-nogate": _case("WiredCfCCell", "no_gate", "state_dict", wiring="AutoNCP"),
    "wired-random-default": _case("WiredCfCCell", "default", "module", wiring="Random"),
    "wired-fc-nogate": _case("WiredCfCCell", "no_gate", "state_dict", wiring="FullyConnected"),
}


def build(case, seed: int):
    """The ncps module of ``case``, float32 as trained, parameters moved away from their init."""
    torch.manual_seed(seed)
    kind, wiring = case["kind"], case["wiring"]
    if kind == "WiredCfCCell":
        m = WiredCfCCell(N_IN, WIRINGS[wiring](), case["mode"])
    elif kind == "CfC" and wiring:
        m = CfC(N_IN, WIRINGS[wiring](), case["proj"], mixed_memory=case["mixed"], mode=case["mode"])
    elif kind == "CfC":
        m = CfC(
            N_IN,
            case["units"],
            case["proj"],
            mixed_memory=case["mixed"],
            mode=case["mode"],
            activation=case["act"],
            backbone_units=case["bu"],
            backbone_layers=case["layers"],
            backbone_dropout=case["dropout"],
        )
    else:
        head_in = case["bu"] if case["layers"] else N_IN + case["units"]
        mask = None
        if case["mask"]:
            mask = (np.random.default_rng(seed).random((head_in, case["units"])) < 0.6).astype(np.float32)
        m = CfCCell(
            N_IN,
            case["units"],
            case["mode"],
            case["act"],
            case["bu"],
            case["layers"],
            case["dropout"],
            sparsity_mask=mask,
        )
    return perturbed_ncps(m, seed).eval()


def spec_of(case) -> dict:
    """The spec a user writes for ``case``'s state_dict: its class's constructor names."""
    spec = {"mode": case["mode"]}
    if case["kind"] == "WiredCfCCell" or case["wiring"]:
        pass
    else:
        spec["activation" if case["kind"] == "CfC" else "backbone_activation"] = case["act"]
        spec["backbone_layers"] = case["layers"]
        spec["backbone_dropout"] = case["dropout"]
        if case["bu"] is not None:
            spec["backbone_units"] = case["bu"]
    if case["kind"] == "CfC":
        spec["mixed_memory"] = case["mixed"]
        if case["proj"]:
            spec["proj_size"] = case["proj"]
    return spec


def run_ncps(module, xs: np.ndarray, el: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ncps over [T, I] with per-step elapsed, batch 1, float64 -> (ys [T, out], final state [S])."""
    m = module.double()
    x = torch.tensor(xs[None])
    with torch.no_grad():
        if isinstance(m, CfC):
            hx = torch.zeros(1, m.state_size, dtype=torch.float64)
            hx = (hx, hx.clone()) if m.use_mixed else hx
            y, hx = m(x, hx, timespans=torch.tensor(el[None, :, None]))
            state = torch.cat(hx, 1) if m.use_mixed else hx
            return y[0].numpy(), state[0].numpy()
        size = m.state_size if isinstance(m, WiredCfCCell) else m.hidden_size
        h = torch.zeros(1, size, dtype=torch.float64)
        ys = []
        for t in range(len(xs)):
            y, h = m(x[:, t], h, torch.tensor(el[t], dtype=torch.float64))
            ys.append(y[0].numpy().copy())
        return np.array(ys), h[0].numpy()


def run_reference(model, xs: np.ndarray, el: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cell = CfCReferenceCell(model, np.float64)
    state = np.zeros((1, model.config.n_state))
    ys = []
    for t in range(len(xs)):
        y, state = cell.step(xs[t][None], state, el[t : t + 1])
        ys.append(y[0])
    return np.array(ys), state[0]


def export(case, module, tmp_path):
    """``module`` through the export route of ``case``."""
    route = case["route"]
    if route == "module":
        return model_from_module(module)
    if route == "pickle":
        torch.save(module, tmp_path / "whole.pt")
        return read_checkpoint(tmp_path / "whole.pt", trust_pickle=True)
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    return read_checkpoint(tmp_path / "sd.pt", spec=spec_of(case))


def _inputs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.5, (n, N_IN)), irregular_elapsed(rng, n)


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_steps_like_ncps(name, tmp_path):
    case = CASES[name]
    seed = sorted(CASES).index(name)
    module = build(case, seed)
    model = export(case, module, tmp_path)
    cfg = model.config
    assert cfg.cell == "cfc" and cfg.mode == case["mode"] and cfg.n_inputs == N_IN
    assert cfg.mixed_memory == case["mixed"] and cfg.proj_size == (case["proj"] or 0)
    if case["wiring"]:
        assert cfg.layer_sizes == tuple((module.rnn_cell if case["kind"] == "CfC" else module).layer_sizes)
    else:
        assert cfg.backbone_layers == case["layers"] and cfg.sparse == case["mask"]
        if case["layers"]:
            assert cfg.activation == case["act"]
    xs, el = _inputs(case["steps"], seed)
    want_y, want_state = run_ncps(module, xs, el)
    got_y, got_state = run_reference(model, xs, el)
    assert got_y.shape == want_y.shape
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_state, want_state, rtol=0, atol=1e-10)
    assert np.std(want_y) > 1e-3  # the outputs move: a constant could not tell the variants apart


@pytest.mark.parametrize("name", ["cfc-nogate-bb2-silu-mixed-proj-long", "cfc-ncp-default-mixed-proj"])
def test_batch_rows_use_their_own_elapsed(name, tmp_path):
    """batch == units, one elapsed per row: each row steps as ncps does on that row alone
    (ncps' own CfC.forward broadcasts the squeezed timespans across units instead)."""
    case = {**CASES[name], "steps": 80}
    module = build(case, 40)
    model = export(case, module, tmp_path)
    b = model.config.units
    rng = np.random.default_rng(41)
    xs, el = rng.normal(0, 1.5, (case["steps"], b, N_IN)), rng.uniform(0.05, 3.0, (case["steps"], b))
    cell = CfCReferenceCell(model, np.float64)
    state = np.zeros((b, model.config.n_state))
    got = []
    for t in range(case["steps"]):
        y, state = cell.step(xs[t], state, el[t])
        got.append(y)
    got = np.array(got)
    for r in range(b):
        want, _ = run_ncps(module, xs[:, r], el[:, r])
        np.testing.assert_allclose(got[:, r], want, rtol=0, atol=1e-10)


def test_module_and_state_dict_give_the_same_model(tmp_path):
    case = CASES["cfc-nogate-bb3-gelu-dropout-proj"]
    module = build(case, 3)
    a = model_from_module(module)
    torch.save({"model_state_dict": module.state_dict(), "epoch": 9}, tmp_path / "ck.pt")
    (tmp_path / "spec.yaml").write_text(
        "mode: no_gate\nactivation: gelu\nbackbone_units: 16\nbackbone_layers: 3\nbackbone_dropout: 0.3\n"
        "proj_size: 4\nmixed_memory: false\ncell: cfc\ninput_names: [a, b, c, d]\n"
    )
    spec = load_spec(tmp_path / "spec.yaml")
    b = read_checkpoint(tmp_path / "ck.pt", key="model_state_dict", spec=spec)
    assert a.config == b.config
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # ncps' Sequential indices 0, 2, 5 (dropout shifts them) are backbone.0..2, in order.
    assert sorted(k for k in a.params if k.startswith("backbone.")) == [
        f"backbone.{k}.{p}" for k in range(3) for p in ("bias", "weight")
    ]
    np.testing.assert_array_equal(
        b.params["backbone.2.weight"], module.rnn_cell.backbone[5].weight.detach().double().numpy()
    )
    assert b.info["input_names"] == "a,b,c,d" and b.info["source_kind"] == "state_dict:CfC"
    assert "source_sha256" in b.info


def test_assume_defaults_names_what_it_assumed():
    module = build(_case("CfC", "default", "state_dict"), 5)
    with pytest.warns(AssumedDefaultWarning) as record:
        model = model_from_state_dict(module.state_dict(), {}, "sd.pt", assume_defaults=True)
    assert sorted(str(w.message).split(": assumed ")[1].split(" (")[0] for w in record) == [
        "activation: lecun_tanh",
        "mode: default",
    ]
    assert model.info["assumed"] == "mode=default,activation=lecun_tanh"
    # A pure-mode backbone-free cell has nothing to assume: the weights tell all.
    pure = build(_case("CfCCell", "pure", "state_dict", layers=0), 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model_from_state_dict(pure.state_dict(), {}, "sd.pt").info.get("assumed") is None


# ------------------------------------------------------------------- bad checkpoints


def _sd(case_name="cfc-default-bb1-lecun-128", seed=7):
    return dict(build(CASES[case_name], seed).state_dict())


GOOD = {"mode": "default", "activation": "lecun_tanh"}


@pytest.mark.parametrize(
    ("edit", "spec", "message"),
    [
        (lambda sd: sd.pop("rnn_cell.time_b.weight"), GOOD, r"sd\.pt: missing rnn_cell\.time_b\.weight"),
        (
            lambda sd: [
                sd.pop(f"rnn_cell.{h}.{p}") for h in ("ff2", "time_a", "time_b") for p in ("weight", "bias")
            ],
            GOOD,
            r"missing CfC heads under rnn_cell\.: neither ff2, time_a, time_b .* nor w_tau, A",
        ),
        (lambda sd: sd.pop("rnn_cell.ff1.weight"), GOOD, r"missing the CfC ff1 head"),
        (
            lambda sd: sd.update({"rnn_cell.ff2.weight": torch.zeros(6, 9)}),
            GOOD,
            r"rnn_cell\.ff2\.weight has shape \[6, 9\], expected \[6, 128\] \(n_inputs 4, units 6, backbone_units 128\)",
        ),
        (
            lambda sd: sd.update({"rnn_cell.ff1.bias": torch.zeros(5)}),
            GOOD,
            r"rnn_cell\.ff1\.bias has shape \[5\], expected \[6\]",
        ),
        (
            lambda sd: sd.update({"rnn_cell.backbone.0.weight": torch.zeros(128, 6)}),
            GOOD,
            r"rnn_cell\.backbone\.0\.weight has shape \[128, 6\]; expected \[backbone_units, n_inputs \+ units\]",
        ),
        (lambda sd: sd.pop("rnn_cell.backbone.0.bias"), GOOD, r"rnn_cell\.backbone\.0\.bias is missing"),
        (
            lambda sd: sd.update(
                {
                    "rnn_cell.backbone.3.weight": torch.zeros(128, 128),
                    "rnn_cell.backbone.3.bias": torch.zeros(128),
                }
            ),
            GOOD,
            r"backbone Linear indices \[0, 3\] under rnn_cell\.backbone\. are not those of an ncps CfCCell "
            r"\(expected \[0, 2\], or \[0, 2\] with backbone_dropout > 0\)",
        ),
        (
            lambda sd: sd.update({"rnn_cell.w_tau": torch.zeros(1, 6)}),
            GOOD,
            r"both pure-mode \(w_tau\) and gated",
        ),
        (
            lambda sd: sd.update({"rnn_cell.time_a.bias": torch.tensor([float("nan")] * 6)}),
            GOOD,
            r"rnn_cell\.time_a\.bias holds NaN",
        ),
        (
            lambda sd: sd.update({"rnn_cell.time_a.weight": "not a tensor"}),
            GOOD,
            None,  # a non-tensor is dropped by read_checkpoint, so the head is missing
        ),
        (lambda sd: None, {"mode": "default"}, r"does not record activation; state it with --spec"),
        (
            lambda sd: None,
            {},
            r"does not record mode, activation.*ncps CfC defaults: mode: default, activation: lecun_tanh",
        ),
        (lambda sd: None, {**GOOD, "mode": "pure"}, r"mode: pure but .*sd\.pt holds ff2/time_a/time_b"),
        (
            lambda sd: None,
            {**GOOD, "backbone_units": 64},
            r"backbone_units: 64 but the weights in .*sd\.pt mean 128",
        ),
        (lambda sd: None, {**GOOD, "backbone_layers": 2}, r"backbone_layers: 2 but the weights .* mean 1"),
        (
            lambda sd: None,
            {**GOOD, "mixed_memory": True},
            r"mixed_memory: true but the weights .* mean false",
        ),
        (lambda sd: None, {**GOOD, "proj_size": 2}, r"proj_size: 2 but the weights .* mean 0"),
        (lambda sd: None, {**GOOD, "ode_unfolds": 6}, r"ode_unfolds is not a key of an ncps CfC.*allowed: "),
        (lambda sd: None, {**GOOD, "cell": "ltc"}, r"cell: ltc but the state_dict .*sd\.pt is an ncps CfC"),
        (
            lambda sd: None,
            {**GOOD, "backbone_activation": "relu"},
            r"activation and backbone_activation disagree",
        ),
        (lambda sd: None, {**GOOD, "activation": "swish"}, r"activation must be one of lecun_tanh, silu"),
        (
            lambda sd: None,
            {**GOOD, "backbone_dropout": 1.5},
            r"backbone_dropout must be a number >= 0 and < 1",
        ),
    ],
)
def test_bad_cfc_checkpoint_gets_a_clear_error(tmp_path, edit, spec, message):
    sd = _sd()
    edit(sd)
    torch.save(sd, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=message or r"sd\.pt: missing rnn_cell\.time_a\.weight") as e:
        read_checkpoint(tmp_path / "sd.pt", spec=spec)
    assert "\n" not in str(e.value) and str(e.value).startswith(("<spec>", str(tmp_path)))


def test_backbone_dropout_index_layout_is_checked_against_the_spec(tmp_path):
    spec = {"mode": "no_gate", "activation": "gelu"}
    sd = _sd("cfc-nogate-bb3-gelu-dropout-proj")  # Linear at Sequential indices 0, 2, 5
    torch.save(sd, tmp_path / "sd.pt")
    assert (
        read_checkpoint(tmp_path / "sd.pt", spec={**spec, "backbone_dropout": 0.3}).config.backbone_layers
        == 3
    )
    with pytest.raises(
        CheckpointError,
        match=r"backbone_dropout: 0 but the backbone's Linear indices .* are those of a dropout",
    ):
        read_checkpoint(tmp_path / "sd.pt", spec={**spec, "backbone_dropout": 0})
    # Renumbered 0, 2, 4 (as without dropout) and a spec stating dropout: refused the other way.
    moved = {k.replace("backbone.5.", "backbone.4."): v for k, v in sd.items()}
    torch.save(moved, tmp_path / "sd4.pt")
    with pytest.raises(CheckpointError, match=r"backbone_dropout: 0.3 .* those of no dropout"):
        read_checkpoint(tmp_path / "sd4.pt", spec={**spec, "backbone_dropout": 0.3})


def test_bad_wired_and_mixed_checkpoints(tmp_path):
    sd = _sd("cfc-ncp-default-mixed-proj")
    for cut, message in [
        (
            "rnn_cell.layer_1.ff1.weight",
            r"wired CfC layer 1 has no ff1 head \(rnn_cell\.layer_1\.ff1\.weight",
        ),
        ("rnn_cell.layer_2.sparsity_mask", r"missing rnn_cell\.layer_2\.sparsity_mask"),
        ("lstm.recurrent_map.weight", r"missing lstm\.recurrent_map\.weight"),
        ("fc.weight", r"missing fc\.weight"),
    ]:
        torch.save({k: v for k, v in sd.items() if k != cut}, tmp_path / "sd.pt")
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(tmp_path / "sd.pt", spec={"mode": "default"})
    torch.save(sd, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"a wired CfC has no backbone"):
        read_checkpoint(tmp_path / "sd.pt", spec={"mode": "default", "backbone_units": 8})
    # ncps lets one build CfC(FullyConnected(6, 2), proj_size=3) but cannot run it: fc sees 6 outputs.
    torch.manual_seed(0)
    bad = CfC(N_IN, wirings.FullyConnected(6, 2), proj_size=3)
    with pytest.raises(CheckpointError, match=r"fc\.weight has shape \[3, 2\], expected \[3, 6\]"):
        model_from_module(bad)


def test_spec_keys_of_the_other_cell_are_refused(tmp_path):
    torch.manual_seed(0)
    ltc = LTC(N_IN, wirings.AutoNCP(8, 2))
    torch.save(ltc.state_dict(), tmp_path / "ltc.pt")
    spec = {"ode_unfolds": 6, "epsilon": 1e-8, "implicit_param_constraints": True}
    with pytest.raises(CheckpointError, match=r"mode is not a key of an ncps LTC"):
        read_checkpoint(tmp_path / "ltc.pt", spec={**spec, "mode": "default"})
    with pytest.raises(CheckpointError, match=r"cell: cfc but the state_dict .* is an ncps LTC"):
        read_checkpoint(tmp_path / "ltc.pt", spec={**spec, "cell": "cfc"})
    assert read_checkpoint(tmp_path / "ltc.pt", spec={**spec, "cell": "ltc"}).config.units == 8


def test_unknown_backbone_activation_module_is_refused():
    torch.manual_seed(0)
    m = CfC(N_IN, 5, backbone_layers=1, backbone_units=8)
    m.rnn_cell.backbone[1] = torch.nn.Softplus()
    with pytest.raises(
        UnsupportedModelError, match=r"backbone activation torch\.nn\.modules\.activation\.Softplus"
    ):
        model_from_module(m)
    m.rnn_cell.backbone[1] = torch.nn.GELU(approximate="tanh")
    with pytest.raises(UnsupportedModelError, match=r"GELU\(approximate='tanh'\)"):
        model_from_module(m)


# ----------------------------------------------------------------- through the file


@pytest.mark.parametrize(
    "name",
    [
        "cfc-nogate-bb3-gelu-dropout-proj",
        "cfc-ncp-default-mixed-proj",
        "wired-ncp-pure",
        "cell-mask-bb1-silu",
    ],
)
def test_export_writes_a_file_that_steps_like_ncps(name, tmp_path):
    case = CASES[name]
    module = build(case, 20)
    out = tmp_path / "m.onnx"
    if case["route"] == "pickle":
        torch.save(module, tmp_path / "whole.pt")
        model = export_checkpoint(tmp_path / "whole.pt", out, trust_pickle=True)
    elif case["route"] == "module":
        model = export_module(module, out, training="unit test")
    else:
        torch.save(module.state_dict(), tmp_path / "sd.pt")
        model = export_checkpoint(tmp_path / "sd.pt", out, spec=spec_of(case))
    back = read(out)
    assert back.config == model.config and back.info["source_sha256"] == model.info["source_sha256"]
    xs, el = _inputs(300, 20)
    want_y, _ = run_ncps(module, xs, el)
    np.testing.assert_allclose(run_reference(back, xs, el)[0], want_y, rtol=0, atol=1e-10)


def test_export_module_of_each_class_writes_a_file(tmp_path):
    for name in ("cfc-default-bb0-mixed", "cell-pure-bb0", "wired-random-default"):
        module = build(CASES[name], 21)
        export_module(module, tmp_path / f"{name}.onnx", training="unit test")
        back = read(tmp_path / f"{name}.onnx")
        assert back.info["training"] == "unit test" and back.info["source_kind"].startswith("module:")
        xs, el = _inputs(100, 21)
        np.testing.assert_allclose(run_reference(back, xs, el)[0], run_ncps(module, xs, el)[0], atol=1e-10)


def test_cli_exports_a_cfc_state_dict(tmp_path, capsys):
    module = build(CASES["cfc-pure-bb2-relu-proj"], 22)
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    out = str(tmp_path / "m.onnx")
    assert main(["export", str(tmp_path / "sd.pt"), "-o", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeliquid export: error: ") and "\n" not in err
    assert "does not record activation" in err and "(ncps CfC default: activation: lecun_tanh)" in err
    (tmp_path / "spec.yaml").write_text("activation: relu\nproj_size: 2\n")
    assert main(["export", str(tmp_path / "sd.pt"), "-o", out, "--spec", str(tmp_path / "spec.yaml")]) == 0
    assert "CfC 6 units, 4 inputs, 2 outputs, mode pure, backbone 2x16" in capsys.readouterr().out
    assert read(out).config.activation == "relu"


def test_a_wrong_mode_or_activation_changes_the_outputs(tmp_path):
    """Why mode and activation are stated, never guessed: the other value steps differently."""
    case = CASES["cfc-nogate-bb3-gelu-dropout-proj"]
    module = build(case, 23)
    xs, el = _inputs(100, 23)
    want, _ = run_ncps(module, xs, el)
    for wrong in ({"mode": "default"}, {"activation": "silu"}):
        model = model_from_state_dict(module.state_dict(), {**spec_of(case), **wrong}, "sd.pt")
        assert np.max(np.abs(run_reference(model, xs, el)[0] - want)) > 1e-3, wrong
