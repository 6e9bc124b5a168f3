"""State_dict exports: hyperparameters stated in a spec or assumed out loud, never guessed.

The oracle is ncps itself: a state_dict exported with the right spec must step
like the module it came from; one exported with the wrong (default) values
must not, which is why they are never filled in silently.
"""

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import perturbed_ncps, run_ncps  # noqa: E402
from ncps import wirings  # noqa: E402
from ncps.torch import LTC, LTCCell  # noqa: E402

import edgeliquid  # noqa: E402
from edgeliquid import CheckpointError  # noqa: E402
from edgeliquid.cli.main import main  # noqa: E402
from edgeliquid.model.export import AssumedDefaultWarning, export_checkpoint  # noqa: E402
from edgeliquid.model.export_spec import KEYS, MAX_SPEC_BYTES, REQUIRED, validate_spec  # noqa: E402
from edgeliquid.model.file import read  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "export.md"
FULL_SPEC = "ode_unfolds: {u}\nepsilon: 1.0e-8\nimplicit_param_constraints: {c}\n"


def _inputs(n_in, steps=60, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(steps, n_in)).astype(np.float32).astype(np.float64)
    el = rng.uniform(0.2, 2, steps).astype(np.float32).astype(np.float64)
    return xs, el


def _run_cell(cell, xs, el):
    """ncps LTCCell stepped by hand (it has no sequence loop), float64."""
    cell = cell.double()
    h = torch.zeros(1, cell.state_size, dtype=torch.float64)
    ys = []
    with torch.no_grad():
        for x, e in zip(xs, el):
            y, h = cell(torch.tensor(x[None]), h, torch.tensor(e, dtype=torch.float64))
            ys.append(y[0].numpy().copy())
    return np.array(ys)


def _max_error(onnx_path, module, n_in, mixed=False):
    xs, el = _inputs(n_in)
    if isinstance(module, LTCCell):
        want = _run_cell(module, xs, el)
    else:
        want = run_ncps(module, xs, el, mixed, np.float64)
    got = edgeliquid.load(onnx_path, backend="reference", dtype=np.float64).run(xs, el)
    return float(np.max(np.abs(got - want)))


# One LTC per hyperparameter the issue found silently wrong.
CASES = {
    "unfolds3": dict(ode_unfolds=3),
    "no_constraints": dict(implicit_param_constraints=False),
}


@pytest.fixture(params=sorted(CASES))
def trained(request, tmp_path):
    kw = CASES[request.param]
    torch.manual_seed(3)
    module = perturbed_ncps(LTC(4, wirings.AutoNCP(10, 2), **kw), 3)
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    unfolds = kw.get("ode_unfolds", 6)
    constraints = "true" if kw.get("implicit_param_constraints", True) else "false"
    (tmp_path / "spec.yaml").write_text(FULL_SPEC.format(u=unfolds, c=constraints))
    return module, tmp_path


def test_state_dict_without_spec_lists_missing_keys_and_ncps_defaults(trained):
    _, d = trained
    with pytest.raises(CheckpointError) as err:
        export_checkpoint(d / "sd.pt", d / "m.onnx")
    msg = str(err.value)
    assert "does not record ode_unfolds, epsilon, implicit_param_constraints" in msg
    assert "ode_unfolds: 6, epsilon: 1.0e-08, implicit_param_constraints: true" in msg
    assert "--assume-defaults" in msg and "docs/export.md" in msg
    assert not (d / "m.onnx").exists()


def test_state_dict_with_the_training_spec_matches_ncps(trained):
    module, d = trained
    export_checkpoint(d / "sd.pt", d / "m.onnx", spec=d / "spec.yaml")
    assert "assumed" not in read(d / "m.onnx").info
    assert _max_error(d / "m.onnx", module, 4) <= 1e-10


def test_assume_defaults_warns_records_and_is_wrong_for_these_models(trained, capsys):
    module, d = trained
    rc = main(["export", str(d / "sd.pt"), "-o", str(d / "m.onnx"), "--assume-defaults"])
    assert rc == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("edgeliquid export: warning: ") for line in err)
    for key, value in (("ode_unfolds", "6"), ("epsilon", "1.0e-08"), ("implicit_param_constraints", "true")):
        assert any(f"assumed {key}: {value}" in line for line in err), err
    info = read(d / "m.onnx").info
    assert info["assumed"] == "ode_unfolds=6,epsilon=1.0e-08,implicit_param_constraints=true"
    # What the issue measured: the defaults give a different model, hence the warnings.
    assert _max_error(d / "m.onnx", module, 4) > 1e-3


def test_partial_spec_names_the_spec_file_and_only_the_missing_key(tmp_path):
    torch.manual_seed(4)
    module = perturbed_ncps(LTC(3, wirings.FullyConnected(6, 2), ode_unfolds=2), 4)
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    spec = tmp_path / "partial.yaml"
    spec.write_text("ode_unfolds: 2\nepsilon: 1.0e-8\n")
    with pytest.raises(CheckpointError) as err:
        export_checkpoint(tmp_path / "sd.pt", tmp_path / "m.onnx", spec=spec)
    msg = str(err.value)
    assert "does not record implicit_param_constraints;" in msg and f"in {spec}" in msg
    assert "ode_unfolds" not in msg.split(";")[0]
    # --assume-defaults fills only what the spec leaves out; stated values win.
    with pytest.warns(AssumedDefaultWarning) as ws:
        model = export_checkpoint(tmp_path / "sd.pt", tmp_path / "m.onnx", spec=spec, assume_defaults=True)
    assert len(ws) == 1 and "implicit_param_constraints: true" in str(ws[0].message)
    assert model.config.ode_unfolds == 2
    assert read(tmp_path / "m.onnx").info["assumed"] == "implicit_param_constraints=true"
    assert _max_error(tmp_path / "m.onnx", module, 3) <= 1e-10


def test_ltccell_defaults_are_ltccells(tmp_path):
    torch.manual_seed(5)
    cell = perturbed_ncps(LTCCell(wirings.AutoNCP(8, 2), in_features=3), 5)
    torch.save(cell.state_dict(), tmp_path / "cell.pt")
    with pytest.raises(CheckpointError, match=r"ncps LTCCell defaults: .*implicit_param_constraints: false"):
        export_checkpoint(tmp_path / "cell.pt", tmp_path / "m.onnx")
    with pytest.warns(AssumedDefaultWarning):
        model = export_checkpoint(tmp_path / "cell.pt", tmp_path / "m.onnx", assume_defaults=True)
    assert model.config.positivity == "none"
    assert read(tmp_path / "m.onnx").info["assumed"].endswith("implicit_param_constraints=false")
    assert _max_error(tmp_path / "m.onnx", cell, 3) <= 1e-10


def test_module_export_needs_no_spec(tmp_path):
    torch.manual_seed(6)
    module = perturbed_ncps(LTC(4, wirings.AutoNCP(10, 2), ode_unfolds=3), 6)
    torch.save(module, tmp_path / "whole.pt")
    model = export_checkpoint(tmp_path / "whole.pt", tmp_path / "m.onnx", trust_pickle=True)
    assert model.config.ode_unfolds == 3 and "assumed" not in model.info
    assert _max_error(tmp_path / "m.onnx", module, 4) <= 1e-10


# ------------------------------------------------------------------ spec validation

GOOD = FULL_SPEC.format(u=6, c="true")
BAD_SPECS = [
    # (spec text, what the one-line error must say)
    (GOOD + "input_names: pos,vel,acc\n", r"input_names must be a YAML list.*write \[pos, vel, acc\]"),
    (GOOD + "input_names: [pos, vel]\n", r"input_names has 2 names but the state_dict .* has 3 inputs"),
    (GOOD + "output_names: [a, b, c]\n", r"output_names has 3 names but .* has 2 outputs"),
    (GOOD + "input_names: [a, a, b]\n", r"input_names: names repeat \['a'\]"),
    (GOOD + "input_names: ['a,b', c, d]\n", r"input_names: 'a,b' is not a name"),
    (GOOD + "input_names: [1, 2, 3]\n", r"input_names must be a YAML list"),
    (
        "ode_unfolds: 0\nepsilon: 1.0e-8\nimplicit_param_constraints: true\n",
        r"ode_unfolds must be an integer >= 1",
    ),
    ("ode_unfolds: 2.5\n", r"ode_unfolds must be an integer >= 1, got 2.5 \(float\)"),
    ("ode_unfolds: true\n", r"ode_unfolds must be an integer >= 1, got True \(bool\)"),
    ("epsilon: 1e-8\n", r"epsilon must be a finite number >= 0, got '1e-8' \(str\).*write e\.g\. 1\.0e-8"),
    ("epsilon: -1.0\n", r"epsilon must be a finite number >= 0"),
    ("epsilon: .nan\n", r"epsilon must be a finite number >= 0"),
    ("implicit_param_constraints: 'yes'\n", r"implicit_param_constraints must be true or false"),
    ("input_mapping: affin\n", r"input_mapping must be one of affine, linear, none"),
    (GOOD + "output_mapping: linear\n", r"output_mapping: linear but the parameters in .* mean 'affine'"),
    (GOOD + "mixed_memory: true\n", r"mixed_memory: true but the state_dict .* has no LSTM parameters"),
    (GOOD + "mixed_memory: 1\n", r"mixed_memory must be true or false"),
    (GOOD + "motor_neurons: 3\n", r"motor_neurons: 3 but output_w in .* has 2"),
    ("ode_unfold: 3\n", r"unknown spec key 'ode_unfold' \(did you mean 'ode_unfolds'\?\)"),
    ("- ode_unfolds\n- 6\n", r"a spec is a mapping .* got list"),
    ("base: &b 6\node_unfolds: *b\n", r"YAML alias at line 2"),
    ("ode_unfolds: [\n", r"invalid YAML"),
]


@pytest.fixture(scope="module")
def plain_ltc(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    torch.manual_seed(7)
    torch.save(perturbed_ncps(LTC(3, wirings.AutoNCP(8, 2)), 7).state_dict(), d / "sd.pt")
    return d / "sd.pt"


@pytest.mark.parametrize("text,want", BAD_SPECS, ids=[f"bad{i}" for i in range(len(BAD_SPECS))])
def test_bad_spec_is_a_one_line_error_naming_the_file_and_key(plain_ltc, tmp_path, capsys, text, want):
    spec = tmp_path / "myspec.yaml"
    spec.write_text(text)
    rc = main(["export", str(plain_ltc), "-o", str(tmp_path / "m.onnx"), "--spec", str(spec)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("edgeliquid export: error: ")
    assert str(spec) in err and re.search(want, err), err
    assert not (tmp_path / "m.onnx").exists()


def test_the_good_spec_of_that_table_exports(plain_ltc, tmp_path):
    # So that every BAD_SPECS row fails for its own line, not for GOOD.
    (tmp_path / "s.yaml").write_text(GOOD + "input_names: [a, b, c]\noutput_names: [u, v]\n")
    model = export_checkpoint(plain_ltc, tmp_path / "m.onnx", spec=tmp_path / "s.yaml")
    info = read(tmp_path / "m.onnx").info
    assert (info["input_names"], info["output_names"]) == ("a,b,c", "u,v")
    assert model.config.n_inputs == 3


def test_oversized_and_binary_specs_are_refused(plain_ltc, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "#" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(CheckpointError, match=r"big.yaml: spec larger than 64 KiB"):
        export_checkpoint(plain_ltc, tmp_path / "m.onnx", spec=big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"bin.yaml: spec is not UTF-8 text"):
        export_checkpoint(plain_ltc, tmp_path / "m.onnx", spec=binary)
    with pytest.raises(CheckpointError, match=r"nope.yaml: cannot read spec"):
        export_checkpoint(plain_ltc, tmp_path / "m.onnx", spec=tmp_path / "nope.yaml")


def test_mapping_spec_from_python_is_validated_too(plain_ltc, tmp_path):
    with pytest.raises(CheckpointError, match=r"<spec>: input_names must be a YAML list"):
        export_checkpoint(plain_ltc, tmp_path / "m.onnx", spec={"input_names": "a,b,c"})
    assert validate_spec({"ode_unfolds": 3, "epsilon": 0}) == {"ode_unfolds": 3, "epsilon": 0}


# ------------------------------------------------------------ docs/export.md is true


def _doc_examples():
    text = DOCS.read_text()
    examples = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        py = re.search(r"```python\n(.*?)```", section, re.S)
        yml = re.search(r"```yaml\n(.*?)```", section, re.S)
        if py and yml:
            examples[title] = (py.group(1), yml.group(1))
    return examples


def test_docs_have_an_example_for_ltc_ltccell_and_every_wiring():
    code = "\n".join(py for py, _ in _doc_examples().values())
    for name in ("LTC(", "LTCCell(", "FullyConnected(", "NCP(", "AutoNCP(", "Random("):
        assert name in code, name


def test_docs_table_lists_every_spec_key_with_its_defaults():
    text = DOCS.read_text()
    for key, k in KEYS.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        if k.default_ltc is not None and key in REQUIRED:
            assert ("true" if k.default_ltc is True else str(k.default_ltc).replace("e-08", ".0e-8")) in row


@pytest.mark.parametrize("title", sorted(_doc_examples()))
def test_docs_example_exports_and_matches_ncps(title, tmp_path, monkeypatch):
    py, yml = _doc_examples()[title]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(8)
    ns: dict = {}
    exec(compile(py, f"docs/export.md: {title}", "exec"), ns)
    module = perturbed_ncps(ns["model"], 8)  # as if trained
    torch.save(module.state_dict(), "policy.pt")
    Path("spec.yaml").write_text(yml)
    assert main(["export", "policy.pt", "-o", "policy.onnx", "--spec", "spec.yaml"]) == 0
    n_in = read("policy.onnx").config.n_inputs
    mixed = getattr(module, "use_mixed", False)
    assert _max_error("policy.onnx", module, n_in, mixed) <= 1e-10


def test_docs_quote_the_real_missing_keys_error(tmp_path, monkeypatch, capsys):
    py, _ = _doc_examples()["LTC with AutoNCP (ncps defaults)"]
    monkeypatch.chdir(tmp_path)
    exec(compile(py, "docs/export.md", "exec"), {})
    assert main(["export", "policy.pt", "-o", "policy.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err in DOCS.read_text()
