"""The chunked CfC batch kernels (``step_batch``, ``run_batch``: CHUNK instances across SIMD lanes,
the chunk scratch layout of ``cfc_packing``) against the numpy reference, per-row elapsed."""

import numpy as np
import pytest
from test_cfc_runtime import TOL, cfc_model, drive, inputs

from edgeliquid import InputError
from edgeliquid.model.cfc import CfCConfig
from edgeliquid.runtime import cfc_kernels
from edgeliquid.runtime.cfc_packing import C_ROWS, C_X, CELL_TAB, L_CH, L_CHN, L_IN, L_N, L_REC, CfCPacked
from edgeliquid.runtime.policy import from_model

CFGS = {
    "wired-default": CfCConfig(6, 12, layer_sizes=(6, 4, 2), backbone_layers=0),
    "wired-nogate-keras": CfCConfig(
        6, 12, "no_gate", layer_sizes=(6, 4, 2), backbone_layers=0, formulation="keras"
    ),
    "wired-pure": CfCConfig(6, 12, "pure", layer_sizes=(6, 4, 2), backbone_layers=0),
    "backbone-proj": CfCConfig(5, 8, backbone_units=12, backbone_layers=2, activation="silu", proj_size=3),
    "bb0-keras": CfCConfig(4, 7, backbone_layers=0, backbone_units=0, formulation="keras"),
    "mixed": CfCConfig(4, 6, backbone_units=8, mixed_memory=True),  # instance-by-instance path
}
B = 70  # one full chunk and a partial one


@pytest.mark.parametrize("name", sorted(CFGS))
def test_step_and_run_batch_match_reference(name):
    """step_batch, then run_batch carrying the state on, then step_batch again; both dtypes."""
    cfg = CFGS[name]
    model = cfc_model(cfg, seed=3)
    xs, es = inputs(cfg, 9, seed=5, batch=B)  # per-row irregular elapsed
    ref = from_model(model, "reference", np.float64, batch=B)
    want = drive(ref, xs, es)
    for dt in (np.float64, np.float32):
        pol = from_model(model, "cpu", dt, batch=B)
        got = [pol.step(xs[t], es[t]).copy() for t in range(2)]
        ran = pol.run(xs[2:7], es[2:7])
        np.testing.assert_array_equal(pol._y, ran[-1])  # step()'s y buffer holds the last step's
        got += list(ran) + [pol.step(xs[t], es[t]).copy() for t in range(7, 9)]
        np.testing.assert_allclose(np.array(got), want, rtol=0, atol=TOL[dt], err_msg=f"{name} {dt.__name__}")
        np.testing.assert_allclose(pol.state, ref.state, rtol=0, atol=TOL[dt])


def test_chunk_layout_reads_heads_input_in_place():
    """Each sub-cell's [input, h] is one contiguous block of scratch rows, and the scratch fits."""
    for cfg in CFGS.values():
        pk = CfCPacked(cfc_model(cfg))
        ip, prev_end = pk.ip, int(pk.ip[C_X]) + cfg.n_inputs
        for c in range(len(cfg.layers())):
            rec = ip[CELL_TAB] + c * L_REC
            assert ip[rec + L_CH] == prev_end  # the input (x or the previous new h) right before h
            assert ip[rec + L_IN] == (cfg.n_inputs if c == 0 else ip[rec - L_REC + L_N])
            assert ip[rec + L_CHN] == ip[rec + L_CH] + ip[rec + L_N]
            prev_end = ip[rec + L_CHN] + ip[rec + L_N]
        assert ip[C_ROWS] * cfc_kernels.CHUNK <= cfc_kernels.batch_scratch_size(pk.work_size)


def test_run_batch_bad_row_stops_at_its_last_good_step():
    """A row that overflows at step 2 keeps its step-1 state and y; every other row runs on."""
    cfg = CfCConfig(4, 6, backbone_units=8, activation="relu")
    model = cfc_model(cfg, seed=2)
    model.params["backbone.0.weight"] = 10 * np.abs(model.params["backbone.0.weight"])  # see test_cfc_runtime
    b, row, t_bad = 67, 65, 2  # the bad row in the partial chunk
    xs, es = inputs(cfg, 4, seed=7, batch=b)
    pol = from_model(model, "cpu", np.float32, batch=b)
    ref = from_model(model, "reference", np.float64, batch=b)
    bad_xs = xs.copy()
    bad_xs[t_bad, row] = 3e38
    with pytest.raises(InputError, match=rf"non-finite state at batch row {row}"):
        pol.run(bad_xs, es)
    want = drive(ref, xs, es)
    others = np.arange(b) != row
    np.testing.assert_allclose(pol.state[others], ref.state[others], rtol=0, atol=1e-5)
    np.testing.assert_allclose(pol._y[others], want[-1, others], rtol=0, atol=1e-5)
    ref2 = from_model(model, "reference", np.float64, batch=b)
    drive(ref2, xs[:t_bad], es[:t_bad])
    np.testing.assert_allclose(pol.state[row], ref2.state[row], rtol=0, atol=1e-5)
    np.testing.assert_allclose(pol._y[row], want[t_bad - 1, row], rtol=0, atol=1e-5)


def test_run_batch_refuses_bad_input_before_any_state_change():
    cfg = CFGS["wired-default"]
    pol = from_model(cfc_model(cfg), "cpu", np.float32, batch=B)
    xs, es = inputs(cfg, 3, batch=B)
    pol.run(xs, es)
    before = pol.state
    es[2, 69] = 0.0
    with pytest.raises(InputError):
        pol.run(xs, es)
    np.testing.assert_array_equal(pol.state, before)


def test_read_only_inputs_reuse_the_warmed_kernels():
    """A read-only sequence (np.broadcast_to, np.frombuffer) is a different numba type: run() copies
    it rather than compile a new kernel signature in the middle of a control or evaluation run."""
    cfg = CFGS["backbone-proj"]
    pol = from_model(cfc_model(cfg, seed=3), "cpu", np.float32, batch=B)
    xs, es = inputs(cfg, 3, seed=5, batch=B)
    before = {k: len(getattr(cfc_kernels, k).signatures) for k in ("run_batch", "step_batch")}
    xs_ro, es_ro = xs.astype(np.float32), es.copy()
    xs_ro.flags.writeable = es_ro.flags.writeable = False
    ys = pol.run(xs_ro, es_ro)
    pol.run(xs_ro, np.broadcast_to(es_ro[:, :1], es_ro.shape))
    assert {k: len(getattr(cfc_kernels, k).signatures) for k in before} == before
    assert ys.shape == (3, B, cfg.proj_size)
