"""``edgeliquid bench``: step latency of every available backend, side by side.

All peers run in one process, one after the other on the same inputs, so their
ratios are meaningful on a shared, noisy machine even when absolute numbers drift.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..model.cell import LTCModel
from ..model.cfc import CfCModel

PERCENTILES = (50, 99, 99.9)


def _timings(fn: Callable[[], Any], steps: int, warmup: int = 50) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(steps, np.int64)
    clock = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(steps):
            t0 = clock()
            fn()
            out[i] = clock() - t0
    finally:
        if gc_was:
            gc.enable()
    return out / 1000.0  # µs


def _summary(us: np.ndarray) -> dict[str, float]:
    d = {f"p{p:g}": float(np.percentile(us, p)) for p in PERCENTILES}
    d["max"] = float(us.max())
    d["mean"] = float(us.mean())
    return d


def _peers(model: LTCModel, path: str | None, dtype) -> dict[str, Callable[[np.ndarray], Any]]:
    """name -> single-step function on one input row, for each installed peer."""
    from ..runtime.policy import from_model

    peers: dict[str, Callable] = {}
    cpu = from_model(model, "cpu", dtype)
    peers["cpu"] = lambda x: cpu.step(x, 1.0)
    ref = from_model(model, "reference", dtype)
    peers["reference"] = lambda x: ref.step(x, 1.0)
    if path is not None:
        try:
            import onnxruntime as ort
        except ImportError:
            pass
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            st = {
                "state": np.zeros((1, model.config.n_state), np.float32),
                "elapsed": np.ones((1, 1), np.float32),
            }

            def ort_step(x):
                y, st["state"] = sess.run(None, {"x": x[None], **st})
                return y

            peers["onnxruntime"] = ort_step
    if model.config.mixed_memory and model.config.mixed_memory_coupling == "input":
        return peers  # ncps.keras's mixed memory: ncps.torch has no such module to time
    try:
        import ncps  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return peers
    if isinstance(model, CfCModel):
        from ..model.export_cfc import cfc_to_ncps_step

        ncps_step = cfc_to_ncps_step(model)
        cs = {"h": torch.zeros(1, model.config.units), "c": torch.zeros(1, model.config.units)}

        def cfc_torch_step(x):
            y, cs["h"], cs["c"] = ncps_step(torch.from_numpy(x)[None], cs["h"], cs["c"])
            return y

        peers["ncps_torch"] = cfc_torch_step
        return peers
    from ..model.export import to_ncps

    module = to_ncps(model).eval()
    cell, lstm = module.rnn_cell, (module.lstm if module.use_mixed else None)
    u = model.config.units
    hs = {"h": torch.zeros(1, u), "c": torch.zeros(1, u)}

    def torch_step(x):
        with torch.no_grad():
            xt = torch.from_numpy(x)[None]
            if lstm is not None:
                hs["h"], hs["c"] = lstm(xt, (hs["h"], hs["c"]))
            y, hs["h"] = cell(xt, hs["h"], 1.0)
        return y

    peers["ncps_torch"] = torch_step
    return peers


def bench_model(
    model: LTCModel,
    path: str | None = None,
    steps: int = 5000,
    batch: int = 1024,
    batch_steps: int = 200,
    dtype=np.float32,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency per peer (µs), batch throughput of the cpu backend (``batch`` 0: skip), ratios to cpu."""
    from ..runtime.policy import from_model

    if steps < 1 or batch < 0 or batch_steps < 1:
        raise ValueError(
            f"bench_model needs steps >= 1, batch >= 0, batch_steps >= 1, got {steps}, {batch}, {batch_steps}"
        )

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, model.config.n_inputs).astype(np.float32)
    results: dict[str, Any] = {"peers": {}, "steps": steps}
    for name, fn in _peers(model, path, dtype).items():
        n = steps if name in ("cpu",) else max(200, steps // 10)
        results["peers"][name] = _summary(_timings(lambda fn=fn: fn(x), n))
    base = results["peers"]["cpu"]["p50"]
    results["ratios_p50_vs_cpu"] = {k: v["p50"] / base for k, v in results["peers"].items()}
    if batch:
        pol = from_model(model, "cpu", dtype, batch=batch)
        xb = rng.uniform(-1, 1, (batch, model.config.n_inputs)).astype(np.float32)
        us = _timings(lambda: pol.step(xb, 1.0), batch_steps, warmup=5)
        results["batch"] = {
            "size": batch,
            "p50_us": float(np.median(us)),
            "instance_steps_per_s": float(batch / np.median(us) * 1e6),
        }
    return results


def format_table(name: str, r: dict[str, Any]) -> str:
    lines = [
        f"{name}: per-step latency, batch 1, µs (ratio = peer p50 / cpu p50)",
        f"  {'backend':12} {'p50':>9} {'p99':>9} {'p99.9':>9} {'max':>9} {'ratio':>8}",
    ]
    for peer, s in r["peers"].items():
        lines.append(
            f"  {peer:12} {s['p50']:9.2f} {s['p99']:9.2f} {s['p99.9']:9.2f} "
            f"{s['max']:9.1f} {r['ratios_p50_vs_cpu'][peer]:8.1f}"
        )
    if "batch" in r:
        b = r["batch"]
        lines.append(
            f"  cpu batch {b['size']}: {b['p50_us']:.1f} µs/step, "
            f"{b['instance_steps_per_s'] / 1e6:.2f} M instance-steps/s"
        )
    return "\n".join(lines)
