"""`edgeliquid bench` on CfC files: the ncps peer computes the same policy as edgeliquid."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ncps")
import torch  # noqa: E402
from ncps.torch import CfC  # noqa: E402

import edgeliquid  # noqa: E402
from edgeliquid.model.export_cfc import cfc_to_ncps_step  # noqa: E402
from edgeliquid.model.file import read  # noqa: E402
from edgeliquid.observe.bench import bench_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _models(tmp_path):
    torch.manual_seed(0)
    unwired = CfC(5, 12, proj_size=3, mixed_memory=True, mode="no_gate", activation="silu", backbone_layers=2)
    path = tmp_path / "unwired.onnx"
    edgeliquid.export_module(unwired, path)
    return [ROOT / "edgeliquid" / "data" / "cartpole_cfc.onnx", path]


def test_ncps_peer_matches_the_reference(tmp_path):
    for path in _models(tmp_path):
        model = read(path)
        ref = edgeliquid.load(path, backend="reference", dtype=np.float64)
        step = cfc_to_ncps_step(model)
        u = model.config.units
        h, c = torch.zeros(1, u), torch.zeros(1, u)
        rng = np.random.default_rng(1)
        for _ in range(50):
            x = rng.normal(size=model.config.n_inputs)
            y_ref = ref.step(x, 1.0).copy()
            y, h, c = step(torch.tensor(x[None], dtype=torch.float32), h, c)
            np.testing.assert_allclose(y[0].numpy(), y_ref, atol=2e-5, rtol=1e-4)


def test_bench_runs_every_peer_on_a_cfc_file(tmp_path):
    path = ROOT / "edgeliquid" / "data" / "cartpole_cfc.onnx"
    r = bench_model(read(path), str(path), steps=300, batch=16, batch_steps=20)
    assert {"cpu", "reference", "onnxruntime", "ncps_torch"} <= set(r["peers"])
    assert r["batch"]["instance_steps_per_s"] > 0
