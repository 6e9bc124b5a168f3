"""The fleet's faster paths against plain references: the sweep's one-call LTC rollout against
the period-by-period loop (bit for bit, and the same error where a rollout fails), policies
lent to one task at a time, and the numba threads a task is given for its CPUs."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from fleet_helpers import MODEL

from edgeliquid.errors import InputError
from edgeliquid.fleet import lockstep as ls
from edgeliquid.fleet import plant as pl
from edgeliquid.fleet import policies
from edgeliquid.fleet import sweep as sw
from edgeliquid.fleet.engine import numba_threads_for
from edgeliquid.fleet.grid import load_grid
from edgeliquid.hil.demo import BALANCED_RAD, BALANCED_X_M
from edgeliquid.model.convert import convert_file

CFC = MODEL.parent / "cartpole_cfc.onnx"


def period_by_period(t: sw.SweepTask) -> dict[str, np.ndarray]:
    """The sweep's rollout as it was: the parallel pass, then the policy's batch step, each period."""
    r = len(t.cond)
    keys = pl.row_keys(t.seed, t.cond, t.rollout)
    states = np.zeros((r, 4))
    sw._init(states, keys, t.init_scale, t.init_angle)
    ring = np.zeros((r, int(t.delay.max()) + 2))
    alive = np.ones(r, np.bool_)
    t_s, fail_s, sum_abs, n_alive = np.zeros(r), np.full(r, np.nan), np.zeros(r), np.zeros(r, np.int64)
    xs, elapsed, dt, last = np.zeros((r, t.n_in), np.float32), np.zeros(r), np.zeros(r), np.zeros(r)
    ys = np.zeros((r, t.n_out), np.float32)
    with policies.lend(t.model, t.model_name, np.float32, r) as pol:
        pol.reset()
        for k in range(t.steps):
            ls.act_sense(
                k, ys, last, states, ring, t.delay, t.params, t.noise, t.jitter, 1.0 / t.rate_hz, keys,
                alive, t_s, fail_s, sum_abs, n_alive, t.chan, t.n_in, t.model_dt, xs, elapsed, dt,
                BALANCED_RAD, BALANCED_X_M,
            )  # fmt: skip
            ys = pol.step(xs, elapsed)
    return {"success": alive, "fail_s": fail_s, "sum_abs": sum_abs, "n_alive": n_alive}


def tasks_for(model, tmp_path, text, rollouts=70, seconds=1.5):
    g = tmp_path / "g.yaml"
    g.write_text(text)
    return sw.make_tasks([(str(model), model.read_bytes())], load_grid(g), rollouts, seconds)


@pytest.fixture(scope="module")
def unfolds3(tmp_path_factory):
    # the explicit solvers are unstable at the sweep's elapsed (~1): another unfold count instead
    out = tmp_path_factory.mktemp("u3") / "u3.onnx"
    convert_file(MODEL, out, "fused_semi_implicit_euler", 3)
    return out


@pytest.mark.parametrize("which", ["shipped", "unfolds3"])
def test_one_call_rollout_is_bit_for_bit_the_period_by_period_loop(which, unfolds3, tmp_path):
    # 70 rows: a full chunk of 64 and a partial one; noise, delays, jitter, hard conditions
    model = MODEL if which == "shipped" else unfolds3
    text = "seed: 4\ngrid: {noise: [0, 0.3], delay_steps: [0, 3]}\nfixed: {init_angle: 0.12, jitter: 0.5}\n"
    for t in tasks_for(model, tmp_path, text):
        got, want = sw.rollout_rows(t), period_by_period(t)
        for k in want:
            assert np.array_equal(got[k], want[k], equal_nan=True), k
        assert 0 < want["success"].mean() < 1  # some rollouts fail: the check is not trivial


def test_a_diverging_rollout_fails_with_the_same_error_either_way(tmp_path):
    # RK4 with 2 unfolds is stable up to elapsed ~0.015; the sweep's periods are ~1: it blows up
    rk4 = tmp_path / "rk4.onnx"
    convert_file(MODEL, rk4, "rk4", 2)
    (t,) = tasks_for(rk4, tmp_path, "fixed: {noise: 0.01}\n", rollouts=70, seconds=1)
    with pytest.raises(InputError) as want:
        period_by_period(t)
    with pytest.raises(InputError) as got:
        sw.rollout_rows(t)
    assert str(got.value) == str(want.value) and "non-finite state" in str(got.value)


def test_cfc_sweeps_period_by_period(tmp_path):
    (t,) = tasks_for(CFC, tmp_path, "fixed: {noise: 0.01}\n", rollouts=20, seconds=0.5)
    got, want = sw.rollout_rows(t), period_by_period(t)
    assert all(np.array_equal(got[k], want[k], equal_nan=True) for k in want)


def test_a_lent_policy_is_one_tasks_alone_and_kept_for_the_next():
    blob = MODEL.read_bytes()
    with policies.lend(blob, "m", "float32", 3) as a, policies.lend(blob, "m", "float32", 3) as b:
        assert a is not b  # two tasks at once: two policies
    with policies.lend(bytes(blob), "m", np.float32, 3) as c:  # equal bytes, another object
        assert c is a or c is b
        assert c.batch == 3 and c.dtype == np.float32


def test_numba_threads_of_a_task_follow_its_cpus():
    top = numba.config.NUMBA_NUM_THREADS
    assert numba_threads_for(1.0) == 1 and numba_threads_for(0.5) == 1
    assert numba_threads_for(2.0) == min(2, top) and numba_threads_for(10_000) == top
