import numpy as np

from edgeliquid.runtime.fastexp import exp32_array


def test_exp32_within_2_ulp_over_clamped_range():
    x = np.concatenate(
        [
            np.linspace(-87.3, 88.3, 2_000_001, dtype=np.float32),
            np.random.default_rng(0).uniform(-10, 10, 500_000).astype(np.float32),
        ]
    )
    out = np.empty_like(x)
    exp32_array(x, out)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(out - ref) / ulp) <= 2.0


def test_exp32_saturates_instead_of_overflowing():
    x = np.array([-1000, -88, 89, 1000], np.float32)
    out = np.empty_like(x)
    exp32_array(x, out)
    assert np.all(np.isfinite(out)) and np.all(out > 0)
