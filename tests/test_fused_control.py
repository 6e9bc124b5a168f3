"""The node's fused control kernels (one per cell) against the generic numpy path."""

from pathlib import Path

import numpy as np
import pytest

import edgeliquid
from edgeliquid.node.channels import ChannelMaps
from edgeliquid.node.config import load_config
from edgeliquid.node.fastpath import fast_arrays, fused_kernel

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,cell", [("cartpole_ncp", "ltc"), ("cartpole_cfc", "cfc")])
def test_fused_kernel_matches_generic_path(name, cell):
    cfg = load_config(ROOT / "configs" / "cartpole_demo.yaml")
    path = ROOT / "edgeliquid" / "data" / f"{name}.onnx"
    fused_policy, generic_policy = edgeliquid.load(path), edgeliquid.load(path)
    assert fused_policy.cell == cell and fast_arrays(fused_policy) is not None  # the node's fast path
    kernel = fused_kernel(fused_policy)
    fp, ip, work = fast_arrays(fused_policy)
    a = ChannelMaps(cfg.inputs, cfg.outputs, fused_policy.dtype)
    b = ChannelMaps(cfg.inputs, cfg.outputs, generic_policy.dtype)
    rng = np.random.default_rng(0)
    for t in range(300):
        raw = rng.normal(0, 0.3, 4) * np.array([1.0, 1.0, 0.2, 1.0])
        if t % 50 == 7:
            raw[2] = 50.0  # far outside the clip: counted on both paths
        elapsed, dt_s = rng.uniform(0.5, 2.0), rng.uniform(0.005, 0.02)
        s1 = kernel(raw, elapsed, dt_s, a.chan, a.xbuf, fp, ip, work)
        s2 = b.apply_numpy(generic_policy, raw, elapsed, dt_s)
        assert s1 == s2 == 0
        np.testing.assert_allclose(a.u, b.u, rtol=1e-5, atol=1e-6)
    assert a.clipped == b.clipped > 0
    bad = np.array([0.0, np.nan, 0.0, 0.0])
    before = fused_policy.state
    assert kernel(bad, 1.0, 0.01, a.chan, a.xbuf, fp, ip, work) != 0
    np.testing.assert_array_equal(fused_policy.state, before)  # nothing committed on bad input
