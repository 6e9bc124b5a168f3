"""The fast paths of fleet replay and sweep against plain references: the batched policy pass,
the compiled comparison (exact p99), the paired normals of the sweep's random streams."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_helpers import MODEL

from edgeliquid.fleet import plant
from edgeliquid.fleet.policies import lend
from edgeliquid.fleet.replay import HIST_EDGES, MODE_SAFE, batch_outputs, compare, policy_outputs

CFC = MODEL.parent / "cartpole_cfc.onnx"


def reference_compare(got, ref, mode, threshold):
    """The straightforward numpy statement of compare's statistics."""
    fin = np.isfinite(got) & np.isfinite(ref)
    both_nan = ~np.isfinite(got) & ~np.isfinite(ref)
    with np.errstate(invalid="ignore"):  # inf - inf where both are infinite: masked out
        d = np.where(fin, np.abs(got - ref), 0.0)
    over = np.where(fin, d > threshold, ~both_nan)
    chans = []
    for c in range(got.shape[1]):
        dc = d[fin[:, c], c]
        first = np.flatnonzero(over[:, c])
        chans.append(
            (
                float(dc.max()) if dc.size else 0.0,
                float(np.percentile(dc, 99)) if dc.size else 0.0,
                int(over[:, c].sum()),
                int(first[0]) if first.size else None,
                int((~fin[:, c] & ~both_nan[:, c]).sum()),
                int(dc.size),
                np.bincount(np.searchsorted(HIST_EDGES, dc, side="right"), minlength=len(HIST_EDGES) + 1),
                float(dc.sum()),
            )
        )
    any_over = np.flatnonzero(over.any(axis=1))
    any_diff = np.flatnonzero((d > 0).any(axis=1) | over.any(axis=1))
    mc = np.where(np.all(np.isfinite(got), axis=1), mode, MODE_SAFE)
    mr = np.where(np.all(np.isfinite(ref), axis=1), mode, MODE_SAFE)
    cc, cr = mc[1:] != mc[:-1], mr[1:] != mr[:-1]
    bad = np.flatnonzero((cc != cr) | (cc & cr & (mc[1:] != mr[1:])))
    return (
        chans,
        int(any_over[0]) if any_over.size else None,
        int(any_diff[0]) if any_diff.size else (int(any_over[0]) if any_over.size else None),
        int(bad.size),
        int(bad[0]) + 1 if bad.size else None,
    )


@pytest.mark.parametrize("seed", range(6))
def test_compiled_compare_equals_the_numpy_statement(seed):
    rng = np.random.default_rng(seed)
    t, m = int(rng.integers(1, 400)), int(rng.integers(1, 4))
    ref = rng.normal(size=(t, m))
    got = ref + rng.normal(size=(t, m)) * 10.0 ** rng.uniform(-9, 0, size=(t, m))
    same = rng.uniform(size=(t, m)) < 0.3
    got[same] = ref[same]
    for arr, p in ((got, 0.05), (ref, 0.03)):
        arr[rng.uniform(size=(t, m)) < p] = rng.choice([np.nan, np.inf, -np.inf])
    mode = rng.integers(0, 3, t)
    r = compare(got, ref, mode, np.arange(t, dtype=np.int64) * 10_000_000, 0.5)
    chans, first_over, first_div, n_mode, first_mode = reference_compare(got, ref, mode, 0.5)
    for c, (mx, p99, over, first, nfm, n, hist, total) in enumerate(chans):
        ch = r["channels"][c]
        assert np.array_equal(r["_hist"][c], hist)
        assert (ch["max_abs_diff"], ch["p99_abs_diff"], ch["_over"]) == (mx, p99, over)
        assert (ch["first_step_over"], ch["nonfinite_mismatch"], ch["_n"]) == (first, nfm, n)
        assert ch["_sum"] == pytest.approx(total, rel=1e-12, abs=1e-300)
    assert (r["first_step_over"], r["first_divergence_step"]) == (first_over, first_div)
    assert (r["mode_changes_differ"], r["first_mode_difference_step"]) == (n_mode, first_mode)
    if first_div is not None:
        assert r["first_divergence_s"] == pytest.approx(first_div * 0.01)


@pytest.mark.parametrize("model", [MODEL, CFC], ids=["ltc", "cfc"])
def test_batched_policy_pass_is_bit_for_bit_the_per_recording_one(model):
    """Segments of unequal length (padding), resets anywhere, a non-finite input (fallback)."""
    rng = np.random.default_rng(1)
    blob = model.read_bytes()
    recs = []
    for t, resets in ((300, [0]), (290, [0, 100, 101]), (50, []), (310, [0, 299]), (1, [0]), (230, [7])):
        reset = np.zeros(t, bool)
        reset[resets] = True
        recs.append({"x": rng.uniform(-1, 1, (t, 4)), "elapsed": rng.uniform(0.5, 1.5, t), "reset": reset})
    bad = [dict(r) for r in recs[:3]]
    bad[1] = {**bad[1], "x": bad[1]["x"].copy()}
    bad[1]["x"][120, 2] = np.nan
    for group in (recs, bad):
        got = batch_outputs(blob, "m", "float32", group)
        with lend(blob, "m", "float32") as single:
            for r, g in zip(group, got):
                want = policy_outputs(single, r["x"], r["elapsed"], r["reset"])
                assert np.array_equal(g, want, equal_nan=True)
    assert np.isnan(got[1][120]).all() and np.isfinite(got[1][121]).all()


def test_paired_normals_are_standard_independent_and_keyed():
    keys = plant.row_keys(0, np.zeros(20000, np.int64), np.arange(20000, dtype=np.int64))
    z = np.array([plant.normal_pair(k, 5) for k in keys])
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.03
    assert plant.normal_pair(keys[3], 5) == tuple(z[3]) and plant.normal_pair(keys[3], 7) != tuple(z[3])
