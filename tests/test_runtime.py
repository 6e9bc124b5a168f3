"""Runtime API: bad input leaves the state untouched, no allocation per step, state handling."""

import tracemalloc

import numpy as np
import pytest
from helpers import random_model

import edgeliquid
from edgeliquid import BackendError, InputError
from edgeliquid.model.file import save

BACKENDS = ["cpu", "reference"]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = tmp_path_factory.mktemp("rt") / "m.onnx"
    save(random_model(np.random.default_rng(11), units=8, n_in=3, motors=2, mixed=True), p)
    return p


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([1.0, np.nan, 0.0]), r"x\[1\] is .*nan.*: inputs must be finite; state unchanged"),
        (np.array([1.0, 0.0, np.inf]), r"x\[2\] is .*inf"),
        (np.zeros(4), r"x: expected shape \(3,\), got \(4,\)"),
        (np.zeros((1, 3)), r"x: expected shape \(3,\), got \(1, 3\)"),
    ],
)
def test_bad_x_raises_and_keeps_state(path, backend, bad, match):
    pol = edgeliquid.load(path, backend=backend)
    pol.step(np.ones(3), 0.5)
    before = pol.state
    with pytest.raises(InputError, match=match):
        pol.step(bad, 1.0)
    np.testing.assert_array_equal(pol.state, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("elapsed", [0.0, -1.0, np.nan, np.inf])
def test_bad_elapsed_raises_and_keeps_state(path, backend, elapsed):
    pol = edgeliquid.load(path, backend=backend)
    pol.step(np.ones(3), 0.5)
    before = pol.state
    with pytest.raises(InputError, match=r"elapsed.* must be finite and > 0"):
        pol.step(np.ones(3), elapsed)
    np.testing.assert_array_equal(pol.state, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_bad_row_named(path, backend):
    pol = edgeliquid.load(path, backend=backend, batch=4)
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    before = pol.state
    with pytest.raises(InputError, match=r"finite"):
        pol.step(x, 1.0)
    np.testing.assert_array_equal(pol.state, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_with_bad_step_changes_nothing(path, backend):
    pol = edgeliquid.load(path, backend=backend)
    xs = np.ones((10, 3))
    xs[7, 0] = np.nan
    with pytest.raises(InputError):
        pol.run(xs)
    np.testing.assert_array_equal(pol.state, np.zeros(pol.n_state))


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_get_set_reset(path, backend):
    pol = edgeliquid.load(path, backend=backend, dtype=np.float64)
    xs = np.random.default_rng(0).normal(size=(20, 3))
    ys = pol.run(xs)
    snap = pol.state
    y_next = pol.step(xs[0]).copy()
    pol.state = snap
    np.testing.assert_array_equal(pol.step(xs[0]), y_next)
    pol.reset()
    np.testing.assert_array_equal(pol.run(xs), ys)
    with pytest.raises(InputError, match=r"state: expected shape \(16,\)"):
        pol.state = np.zeros(3)
    with pytest.raises(InputError, match="state must be finite"):
        pol.state = np.full(16, np.nan)


def test_step_accepts_lists_and_other_dtypes(path):
    pol = edgeliquid.load(path)
    a = pol.step([0.1, 0.2, 0.3]).copy()
    pol.reset()
    b = pol.step(np.array([0.1, 0.2, 0.3], np.float64)).copy()
    np.testing.assert_array_equal(a, b)


def test_steady_state_step_allocates_nothing(path):
    pol = edgeliquid.load(path)
    x = np.ones(3, np.float32)
    for _ in range(100):
        pol.step(x, 1.0)
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(10_000):
        pol.step(x, 1.0)
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename") if s.size_diff > 0)
    # Nothing kept per step: 10k steps may not grow the heap by even one byte per step.
    assert grown < 10_000, grown


def test_unknown_backend(path):
    with pytest.raises(BackendError, match=r"unknown backend 'tpu'; expected one of"):
        edgeliquid.load(path, backend="tpu")


def test_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, edgeliquid; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_same_array_every_step_reads_its_new_values_and_views_are_checked(path):
    """step remembers the last array that passed its checks, never its values: a control loop
    refilling one array steps on the new inputs; a strided view or a changed-dtype array is
    checked (and copied) again, stepping on the same values as a fresh contiguous copy."""
    pol, ref = edgeliquid.load(path), edgeliquid.load(path)
    x = np.zeros(3, np.float32)
    rng = np.random.default_rng(4)
    for _ in range(20):
        x[:] = rng.normal(size=3)  # in place: the same object every step
        np.testing.assert_array_equal(pol.step(x, 0.7), ref.step(x.copy(), 0.7))
    big = rng.normal(size=6).astype(np.float32)
    for odd in (big[::2], big[:3].astype(np.float64), big[:3].copy().reshape(1, 3)[0]):
        np.testing.assert_array_equal(
            pol.step(odd, 1.3), ref.step(np.ascontiguousarray(odd, np.float32), 1.3)
        )
    x.flags.writeable = False  # read-only now: still stepped on its values
    np.testing.assert_array_equal(pol.step(x, 1.0), ref.step(x.copy(), 1.0))
    with pytest.raises(InputError, match="expected shape"):
        pol.step(np.zeros(4, np.float32))
