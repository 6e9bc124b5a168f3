"""Hostile and broken model files (issue 11, items 3-5): each is refused with a
ModelFormatError naming the file and the key, in bounded time and memory, and nothing
outside the model file is ever read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import random_model
from onnx import TensorProto, helper, numpy_helper

import edgeliquid
from edgeliquid import ModelFormatError
from edgeliquid.model.checks import LIMITS, MAX_FILE_BYTES
from edgeliquid.model.file import read, read_bytes, save

SHIPPED = Path(edgeliquid.__file__).parent / "data" / "cartpole_ncp.onnx"  # an NCP: 1 motor, 4 command
DOCS = Path(__file__).resolve().parent.parent / "docs" / "model-format.md"


# --------------------------------------------------------------------------- helpers


def _write(tmp_path: Path, mutate, name: str = "bad.onnx", base: Path = SHIPPED) -> Path:
    m = onnx.load(base)
    mutate(m)
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


def _refused(path: Path, *keys: str) -> str:
    """Load must fail with a ModelFormatError naming the file and every key."""
    with pytest.raises(ModelFormatError) as info:
        edgeliquid.load(path, backend="reference")
    msg = str(info.value)
    assert str(path) in msg, msg
    for key in keys:
        assert key in msg, f"{key!r} not in {msg!r}"
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def set_meta(**values):
    """Set (or, with None, delete) ``edgeliquid.*`` keys."""

    def mutate(m):
        props = {p.key: p.value for p in m.metadata_props}
        for key, value in values.items():
            if value is None:
                props.pop("edgeliquid." + key, None)
            else:
                props["edgeliquid." + key] = value
        del m.metadata_props[:]
        helper.set_model_props(m, props)

    return mutate


def init(m, name) -> TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def replace_init(name, tensor: TensorProto):
    def mutate(m):
        init(m, name).CopyFrom(tensor)

    return mutate


# ----------------------------------------------------------- sizes: strict integers


@pytest.mark.parametrize("key", ["units", "n_inputs", "motor_neurons", "ode_unfolds", "n_state", "synapses"])
@pytest.mark.parametrize(
    "value",
    ["6.0", "1e3", "-1", "+6", " 6", "nan", "inf", "1_0", "\u0663", "", "9" * 13, "9" * 5000],
    ids=[
        "point",
        "exp",
        "neg",
        "plus",
        "space",
        "nan",
        "inf",
        "underscore",
        "arabic3",
        "empty",
        "d13",
        "d5000",
    ],
)
def test_sizes_are_strict_integers(tmp_path, key, value):
    path = _write(tmp_path, set_meta(**{key: value}))
    _refused(path, f"edgeliquid.{key}=", "not a non-negative integer")


def test_sizes_over_the_limits(tmp_path):
    cases = {
        "units": dict(units="4097"),
        "n_inputs": dict(n_inputs="4097"),
        "ode_unfolds": dict(ode_unfolds="1001"),
    }
    for key, meta in cases.items():
        msg = _refused(_write(tmp_path, set_meta(**meta)), f"{key}=", "exceeds the limit")
        assert str(LIMITS[key]) in msg


def test_zero_sizes(tmp_path):
    _refused(_write(tmp_path, set_meta(units="0")), "units must be >= 1")


def test_declared_derived_sizes_must_agree(tmp_path):
    _refused(_write(tmp_path, set_meta(n_state="13")), "edgeliquid.n_state", "disagrees")
    _refused(_write(tmp_path, set_meta(n_outputs="2")), "edgeliquid.n_outputs", "disagrees")
    _refused(_write(tmp_path, set_meta(synapses="145")), "edgeliquid.synapses=145", "exceeds the 144")
    _refused(_write(tmp_path, set_meta(synapses="21")), "edgeliquid.synapses=21", "sparsity_mask has 22")
    _refused(_write(tmp_path, set_meta(sensory_synapses="13")), "edgeliquid.sensory_synapses=13")


def test_epsilon_not_a_number(tmp_path):
    _refused(_write(tmp_path, set_meta(epsilon="tiny")), "edgeliquid.epsilon", "not a number")
    _refused(_write(tmp_path, set_meta(epsilon="inf")), "epsilon must be finite")


# ------------------------------------------------------------------------ metadata


def test_metadata_value_too_long(tmp_path):
    path = _write(tmp_path, set_meta(training="x" * (LIMITS["metadata_value_chars"] + 1)))
    msg = _refused(path, "'edgeliquid.training'", "the limit is 65536")
    assert "xxxxxxxxxx" * 10 not in msg  # the value itself is never formatted


def test_metadata_too_many_entries_or_long_key(tmp_path):
    many = {f"note{i}": "1" for i in range(LIMITS["metadata_entries"])}
    _refused(_write(tmp_path, set_meta(**many)), "metadata_props entries exceed the limit 256")
    _refused(_write(tmp_path, set_meta(**{"k" * 300: "1"})), "characters long; the limit is 256")


def test_duplicate_metadata_key(tmp_path):
    def dup(m):
        m.metadata_props.add(key="edgeliquid.units", value="12")

    _refused(_write(tmp_path, dup), "'edgeliquid.units' appears twice")


def test_long_values_are_cut_in_messages(tmp_path):
    msg = _refused(_write(tmp_path, set_meta(cell="y" * 60000)), "edgeliquid.cell")
    assert len(msg) < 300


# --------------------------------------------------------------------- external data


def _externalise(m, name: str, location: str) -> None:
    t = init(m, name)
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)


def test_external_data_with_relative_location_is_not_followed(tmp_path, monkeypatch):
    """The weights sit in a real file the location resolves to, both from the model's
    folder and from the working directory; an old loader read them silently."""
    shipped = onnx.load(SHIPPED)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vleak.bin").write_bytes(init(shipped, "vleak").raw_data)
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.chdir(models)  # "../outside/vleak.bin" resolves from here too
    path = _write(models, lambda m: _externalise(m, "vleak", "../outside/vleak.bin"))
    msg = _refused(path, "initializer 'vleak'", "external data", "../outside/vleak.bin")
    assert "self-contained" in msg
    with pytest.raises(ModelFormatError, match=r"bad\.onnx: initializer 'vleak' keeps its values"):
        read(Path("bad.onnx"))
    with pytest.raises(ModelFormatError, match=r"<b>: initializer 'vleak'"):
        read_bytes(path.read_bytes(), "<b>")


def test_external_data_absolute_location_and_graph_helpers(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"\0" * 16)
    _refused(_write(tmp_path, lambda m: _externalise(m, "cm", str(target))), "initializer 'cm'", "external")
    # An initializer edgeliquid does not read (a graph helper onnxruntime would load).
    _refused(_write(tmp_path, lambda m: _externalise(m, "axes_1", str(target))), "initializer 'axes_1'")


def test_external_data_in_a_constant_node(tmp_path):
    def add_constant(m):
        t = numpy_helper.from_array(np.zeros(4, np.float32), "c")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="/etc/passwd")
        m.graph.node.append(helper.make_node("Constant", [], ["c_out"], name="konst", value=t))

    _refused(_write(tmp_path, add_constant), "node 'konst' attribute 'value'", "external data")


def test_external_data_fields_without_the_location_flag(tmp_path):
    def mutate(m):
        init(m, "gleak").external_data.add(key="location", value="x.bin")

    _refused(_write(tmp_path, mutate), "initializer 'gleak'", "external data")


# ----------------------------------------------------------------- malformed tensors


def test_raw_data_of_the_wrong_size(tmp_path):
    def short(m):
        t = init(m, "gleak")
        t.raw_data = t.raw_data[:-1]

    _refused(_write(tmp_path, short), "parameter 'gleak'", "47 bytes of raw_data", "needs 48")


def test_float_data_of_the_wrong_count(tmp_path):
    t = TensorProto(name="gleak", data_type=TensorProto.FLOAT, dims=[12], float_data=[0.5] * 11)
    _refused(_write(tmp_path, replace_init("gleak", t)), "parameter 'gleak'", "11 values", "needs 12")


def test_huge_declared_dims_are_refused_before_decoding(tmp_path):
    """The issue's `cannot reshape array of size 1 into shape (1000000000000,)`."""
    t = TensorProto(name="gleak", data_type=TensorProto.FLOAT, dims=[10**12], raw_data=b"\0" * 4)
    _refused(_write(tmp_path, replace_init("gleak", t)), "parameter 'gleak' has shape (1000000000000,)")
    many = TensorProto(name="mu", data_type=TensorProto.FLOAT, dims=[1] * 100000)
    _refused(_write(tmp_path, replace_init("mu", many)), "parameter 'mu' has shape <100000 dims>")
    neg = TensorProto(name="cm", data_type=TensorProto.FLOAT, dims=[-12])
    _refused(_write(tmp_path, replace_init("cm", neg)), "parameter 'cm' has shape (-12,)")


@pytest.mark.parametrize("dims", [[], [12], [144], [12, 12, 1]])
def test_masks_of_the_wrong_rank(tmp_path, dims):
    """0-d/1-d masks raised IndexError while recovering roles; here the roles are absent too."""
    n = int(np.prod(dims))
    t = numpy_helper.from_array(np.ones(n, np.float32).reshape(dims), "sparsity_mask")

    def mutate(m):
        replace_init("sparsity_mask", t)(m)
        set_meta(neuron_roles=None)(m)

    _refused(_write(tmp_path, mutate), "parameter 'sparsity_mask' has shape", "expected (12, 12)")


@pytest.mark.parametrize(
    "tensor",
    [
        helper.make_tensor("sigma", TensorProto.STRING, [12, 12], [b"a"] * 144),
        numpy_helper.from_array(np.ones((12, 12), np.int64), "sigma"),
        numpy_helper.from_array(np.ones((12, 12), np.int32), "sigma"),
        numpy_helper.from_array(np.ones((12, 12), np.float16), "sigma"),
        numpy_helper.from_array(np.ones((12, 12), bool), "sigma"),
        TensorProto(name="sigma", data_type=TensorProto.UNDEFINED, dims=[12, 12]),
        TensorProto(name="sigma", data_type=99, dims=[12, 12], raw_data=b"\0" * 576),
    ],
    ids=["string", "int64", "int32", "float16", "bool", "undefined", "unknown"],
)
def test_parameters_must_be_float32_or_float64(tmp_path, tensor):
    _refused(_write(tmp_path, replace_init("sigma", tensor)), "parameter 'sigma' has data type")


def test_float64_parameters_are_read_at_full_precision(tmp_path):
    shipped = onnx.load(SHIPPED)
    vleak = numpy_helper.to_array(init(shipped, "vleak")).astype(np.float64) + 1e-12
    path = _write(tmp_path, replace_init("vleak", numpy_helper.from_array(vleak, "vleak")), "f64.onnx")
    np.testing.assert_array_equal(read(path).params["vleak"], vleak)


def test_float64_beyond_float32_is_refused(tmp_path):
    big = np.full(12, 0.5)
    big[3] = 1e39
    t = numpy_helper.from_array(big, "vleak")
    _refused(_write(tmp_path, replace_init("vleak", t)), "parameter 'vleak' holds 1e+39", "float32")


def test_segmented_tensor(tmp_path):
    def mutate(m):
        init(m, "cm").segment.begin = 0
        init(m, "cm").segment.end = 6

    _refused(_write(tmp_path, mutate), "parameter 'cm' is a segment")


def test_duplicate_initializer_names(tmp_path):
    def dup(m):
        m.graph.initializer.append(numpy_helper.from_array(np.full(12, 9.0, np.float32), "gleak"))

    _refused(_write(tmp_path, dup), "initializer 'gleak' appears more than once")

    def dup_helper(m):
        m.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "axes_1"))

    _refused(_write(tmp_path, dup_helper), "initializer 'axes_1' appears more than once")


# ------------------------------------------------------------------ roles and masks


def _roles(m) -> list[str]:
    return next(p.value for p in m.metadata_props if p.key == "edgeliquid.neuron_roles").split(",")


def _with_roles(change):
    def mutate(m):
        roles = _roles(m)
        change(roles)
        set_meta(neuron_roles=",".join(roles))(m)

    return mutate


def test_shipped_model_roles_agree_with_masks():
    model = read(SHIPPED)
    assert model.roles.count("motor") == 1 and "command" in model.roles


def test_roles_count_and_names(tmp_path):
    _refused(_write(tmp_path, _with_roles(lambda r: r.pop())), "neuron_roles has 11 entries for 12 units")
    _refused(_write(tmp_path, _with_roles(lambda r: r.__setitem__(5, "sensory"))), "unknown role 'sensory'")
    _refused(_write(tmp_path, _with_roles(lambda r: r.__setitem__(5, ""))), "unknown role ''")


def test_motor_roles_must_be_the_outputs(tmp_path):
    _refused(
        _write(tmp_path, _with_roles(lambda r: r.__setitem__(0, "command"))),
        "neuron_roles says neuron 0 is 'command'",
        "motor_neurons=1",
    )
    _refused(_write(tmp_path, _with_roles(lambda r: r.__setitem__(3, "motor"))), "neuron 3 is 'motor'")


def test_ncp_roles_contradicted_by_the_sensory_mask(tmp_path):
    """A neuron fed by a sensory synapse declared 'command' (an NCP feeds only inter neurons)."""
    shipped = onnx.load(SHIPPED)
    smask = numpy_helper.to_array(init(shipped, "sensory_sparsity_mask"))
    fed = int(np.nonzero(smask.any(axis=0))[0][0])
    assert _roles(shipped)[fed] == "inter"
    path = _write(tmp_path, _with_roles(lambda r: r.__setitem__(fed, "command")))
    _refused(path, "sensory_sparsity_mask", f"neuron {fed}, a 'command' neuron", "only inter neurons")


def test_ncp_roles_contradicted_by_the_recurrent_mask(tmp_path):
    """An inter neuron wired straight into the motor neuron."""
    shipped = onnx.load(SHIPPED)
    inter = _roles(shipped).index("inter")
    mask = numpy_helper.to_array(init(shipped, "sparsity_mask")).copy()
    mask[inter, 0] = 1.0
    path = _write(tmp_path, replace_init("sparsity_mask", numpy_helper.from_array(mask, "sparsity_mask")))
    _refused(path, "sparsity_mask", f"from neuron {inter}, a 'inter' neuron", "fed only by command")


def test_derived_keys_are_those_metadata_for_writes():
    from edgeliquid.model.file import DERIVED_KEYS, metadata_for

    model = random_model(np.random.default_rng(2))
    assert set(metadata_for(model)) == set(DERIVED_KEYS)


def test_roles_recovered_when_absent_still_load(tmp_path):
    path = _write(tmp_path, set_meta(neuron_roles=None), "noroles.onnx")
    assert read(path).roles == read(SHIPPED).roles


# ---------------------------------------------------------- files that are not files


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    _refused(fifo, "not a regular file")


def test_directory_is_refused(tmp_path):
    _refused(tmp_path, "cannot read model file")


def test_nul_in_path(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot read model file"):
        read(str(tmp_path / "a\0b.onnx"))


def test_read_bytes_over_the_size_limit_is_not_parsed():
    class Huge(bytes):
        def __len__(self):  # a stand-in: 512 MiB of real bytes would be a slow test
            return MAX_FILE_BYTES + 1

    with pytest.raises(ModelFormatError, match=r"<big>: file size 536870913 bytes exceeds the limit"):
        read_bytes(Huge(b"x"), "<big>")


# ----------------------------------------------------- only ModelFormatError, ever


def test_corrupted_bytes_raise_only_model_format_error():
    """Truncations and byte flips of a valid file: each loads or is a ModelFormatError."""
    data = SHIPPED.read_bytes()
    rng = np.random.default_rng(11)
    variants = [data[:n] for n in rng.integers(0, len(data), 150)]
    for _ in range(300):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), rng.integers(1, 4)):
            b[pos] = int(rng.integers(0, 256))
        variants.append(bytes(b))
    refused = 0
    for i, v in enumerate(variants):
        try:
            read_bytes(v, f"<variant {i}>")
        except ModelFormatError as exc:
            assert str(exc).startswith(f"<variant {i}>: "), exc
            refused += 1
    assert refused > 150


def test_nasty_metadata_values_raise_only_model_format_error(tmp_path):
    nasty = [
        "",
        "-0",
        "0x10",
        "1" * 40,
        "\x00",
        "\udcff".encode("utf-8", "surrogatepass").hex(),
        "💥",
        "None",
    ]
    base = onnx.load(SHIPPED)
    keys = [p.key[len("edgeliquid.") :] for p in base.metadata_props if p.key.startswith("edgeliquid.")]
    for key in keys:
        for value in nasty:
            m = onnx.load(SHIPPED)
            set_meta(**{key: value})(m)
            try:
                read_bytes(m.SerializeToString(), f"<{key}>")
            except ModelFormatError as exc:
                assert str(exc).startswith(f"<{key}>: "), exc


def test_invalid_utf8_metadata(tmp_path):
    """protobuf hands back bytes, not str, for a string field that is not UTF-8."""
    good = SHIPPED.read_bytes()
    marker = b"edgeliquid.cell\x12\x03"
    i = good.index(marker) + len(marker)
    bad = good[:i] + b"\xff" + good[i + 1 :]  # the value 'ltc' -> b'\xfftc'
    with pytest.raises(ModelFormatError, match=r"^<utf8>: metadata_props entry \d+ .* not valid UTF-8"):
        read_bytes(bad, "<utf8>")


def _big_model(path: Path, units: int) -> Path:
    """A valid model of ``units`` neurons with no synapses (zeros: cheap to write)."""
    u = units
    shapes = {"gleak": (u,), "vleak": (u,), "cm": (u,), "sensory_sparsity_mask": (4, u)}
    shapes.update({k: (u, u) for k in ("w", "sigma", "mu", "erev", "sparsity_mask")})
    shapes.update({k: (4, u) for k in ("sensory_w", "sensory_sigma", "sensory_mu", "sensory_erev")})

    def mutate(m):
        set_meta(units=str(u), n_state=str(u), synapses="0", sensory_synapses="0", neuron_roles=None)(m)
        for t in m.graph.initializer:
            if t.name in shapes:
                t.CopyFrom(numpy_helper.from_array(np.zeros(shapes[t.name], np.float32), t.name))
        for vi in list(m.graph.input) + list(m.graph.output):
            if vi.name in ("state", "next_state"):
                vi.type.tensor_type.shape.dim[1].dim_value = u

    return _write(path, mutate, "big.onnx")


SHORT_OF_MEMORY = textwrap.dedent(
    """
    import json, resource, sys
    from edgeliquid import ModelFormatError
    from edgeliquid.model.file import read
    outcomes = []
    for extra_mb in range(25, 500, 25):
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + extra_mb * 2**20, resource.RLIM_INFINITY))
        try:
            read(sys.argv[1])
            outcomes.append("loaded")
            break
        except ModelFormatError as exc:
            outcomes.append(str(exc))
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(json.dumps(outcomes))
    """
)


def test_running_out_of_memory_is_a_model_format_error(tmp_path):
    """The last line of defence: a MemoryError half-way through reading (a robot short of
    memory) still leaves as a ModelFormatError naming the file, whatever step it hits."""
    path = _big_model(tmp_path, 1500)
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_OF_MEMORY, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes[-1] == "loaded", outcomes  # enough memory: a valid model
    for out in outcomes:
        assert out == "loaded" or out.startswith(f"{path}: "), out
    assert any("malformed model file (MemoryError" in out for out in outcomes), outcomes


# -------------------------------------- bounded time and memory, in a limited child

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import edgeliquid
    from edgeliquid import ModelFormatError
    cpu0 = time.process_time()
    # CPU seconds, not wall time: a hang is killed however busy the machine is.
    cap = int(cpu0) + 30
    resource.setrlimit(resource.RLIMIT_CPU, (cap, cap + 5))
    try:
        pol = edgeliquid.load(sys.argv[1], backend=sys.argv[3])
        pol.step([0.0] * pol.n_inputs)
        out = {"error": None}
    except ModelFormatError as exc:
        out = {"error": str(exc)}
    out["cpu_s"] = time.process_time() - cpu0
    print(json.dumps(out))
    """
)
AS_LIMIT = 1536 * 2**20


def _load_in_child(path: Path, backend: str = "cpu") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(AS_LIMIT), backend],
        capture_output=True,
        text=True,
        timeout=300,  # a last resort only; the child's CPU limit is the real bound
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_harness_loads_a_valid_model():
    out = _load_in_child(SHIPPED)
    assert out["error"] is None


HUGE = {
    # units = 1e8 without roles cost 12 GB while recovering the roles
    "units_1e8": (set_meta(units="100000000", neuron_roles=None), "units=100000000 exceeds the limit 4096"),
    # ode_unfolds = 1e9 hung warm-up (cpu) and the first step (reference)
    "unfolds_1e9": (set_meta(ode_unfolds="1000000000"), "ode_unfolds=1000000000 exceeds the limit 1000"),
    "parameters": (
        set_meta(units="4096", n_inputs="4096", mixed_memory="true", neuron_roles=None, synapses=None),
        "parameters (units=4096, n_inputs=4096, mixed_memory=True) exceed the limit 67108864",
    ),
    "work_per_step": (
        set_meta(units="2048", n_state="2048", ode_unfolds="1000", neuron_roles=None),
        "synapse evaluations per step exceed the limit 268435456",
    ),
    "dims_1e12": (
        replace_init("gleak", TensorProto(name="gleak", data_type=1, dims=[10**12], raw_data=b"\0" * 4)),
        "parameter 'gleak' has shape (1000000000000,)",
    ),
}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_sizes_refused_in_bounded_time_and_memory(tmp_path, case, backend):
    mutate, expected = HUGE[case]
    path = _write(tmp_path, mutate, f"{case}.onnx")
    out = _load_in_child(path, backend)
    assert out["error"] is not None and str(path) in out["error"], out
    assert expected in out["error"], out
    assert out["cpu_s"] < 5.0, out


def test_oversized_file_refused_before_reading(tmp_path):
    path = tmp_path / "big.onnx"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    out = _load_in_child(path)
    assert out["error"] == (
        f"{path}: file size {MAX_FILE_BYTES + 1} bytes exceeds the limit {MAX_FILE_BYTES} bytes "
        "(docs/model-format.md, Limits)"
    )
    assert out["cpu_s"] < 5.0, out


# ------------------------------------------------------------- the limits, documented


def test_limits_table_in_the_docs_matches_the_code():
    text = DOCS.read_text()
    table = text[text.index("## Limits") :]
    for name, value in LIMITS.items():
        assert re.search(rf"\| `{name}` \| `{value}`", table), f"{name} = {value} not documented"


def test_export_refuses_models_over_the_limits(tmp_path):
    m = random_model(np.random.default_rng(0), unfolds=6)
    m.config = m.config.replace(ode_unfolds=LIMITS["ode_unfolds"] + 1)
    with pytest.raises(ModelFormatError, match="ode_unfolds=1001 exceeds the limit 1000"):
        save(m, tmp_path / "x.onnx")
