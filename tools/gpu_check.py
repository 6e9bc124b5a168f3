#!/usr/bin/env python3
"""One prepared GPU check: CUDA parity tests, then a timing sweep, a short table last.

Installs nothing. Run on a machine with an NVIDIA GPU, numba-cuda, torch and ncps:

    python tools/gpu_check.py [--batches 1 64 1024 16384 65536] [--steps 50]

Sweep: driving-size NCP (AutoNCP 19 units / 8 inputs / 1 output) and FullyConnected 256
(32 inputs); per batch size, instance-steps/s of edgeliquid cuda (step per call, and a
whole sequence per launch), the numba cpu backend, and ncps torch on the same GPU; plus the
kernel-launch floor (an empty kernel) to judge batch-1 latency.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def launch_floor_us(n: int = 2000) -> float:
    from numba import cuda

    @cuda.jit
    def empty(a):
        pass

    d = cuda.device_array(1, np.float32)
    empty[1, 1](d)
    cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        empty[1, 1](d)
        cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def torch_rate(module, batch: int, n_in: int, steps: int) -> float:
    import torch

    dev = torch.device("cuda")
    cell = module.rnn_cell.to(dev).eval()
    x = torch.rand(batch, n_in, device=dev)
    h = torch.zeros(batch, cell.state_size, device=dev)
    with torch.no_grad():
        cell(x, h, 1.0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            _, h = cell(x, h, 1.0)
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 64, 1024, 16384, 65536])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if not args.skip_tests:
        rc = subprocess.call(
            [sys.executable, "-m", "pytest", "-q"]
            + [str(ROOT / "tests" / f) for f in ("test_cuda.py", "test_cfc_cuda.py")],
            env=env,
            cwd=ROOT,
        )
        print(f"cuda parity tests: {'PASS' if rc == 0 else 'FAIL'}", flush=True)
    import torch
    from ncps.torch import LTC
    from ncps.wirings import AutoNCP, FullyConnected
    from numba import cuda

    import edgeliquid
    from edgeliquid.model.export import export_module

    name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else str(name)
    floor = launch_floor_us()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, n_in, wiring in (
            ("driving-ncp-19", 8, AutoNCP(19, 1)),
            ("fc-256", 32, FullyConnected(256)),
        ):
            torch.manual_seed(0)
            module = LTC(n_in, wiring)
            path = Path(tmp) / f"{label}.onnx"
            export_module(module, path)
            for b in args.batches:
                x = np.random.default_rng(0).uniform(-1, 1, (b, n_in)).astype(np.float32)
                gpu = edgeliquid.load(path, backend="cuda", batch=b)
                gpu.step(x)
                t = time.perf_counter()
                for _ in range(args.steps):
                    gpu.step(x)
                step_s = (time.perf_counter() - t) / args.steps
                xs = np.repeat(x[None], args.steps, 0)
                gpu.run(xs[:1])
                t = time.perf_counter()
                gpu.run(xs)
                run_s = (time.perf_counter() - t) / args.steps
                cpu_rate = float("nan")
                if b <= 16384:
                    cpu = edgeliquid.load(path, backend="cpu", batch=b)
                    cpu.step(x)
                    n = max(3, min(args.steps, 200000 // b))
                    t = time.perf_counter()
                    for _ in range(n):
                        cpu.step(x)
                    cpu_rate = b * n / (time.perf_counter() - t)
                tr = torch_rate(module, b, n_in, args.steps)
                rows.append((label, b, step_s * 1e6, b / step_s, b / run_s, cpu_rate, tr))
                print(rows[-1], flush=True)
    print(f"\nGPU: {name}; empty-kernel launch + sync floor: {floor:.1f} µs")
    print(
        f"{'model':15} {'batch':>6} {'step µs':>9} {'M inst-steps/s step':>20} {'run':>8} "
        f"{'cpu':>8} {'torch':>8} {'x torch':>8}"
    )
    for label, b, us, r_step, r_run, r_cpu, r_t in rows:
        print(
            f"{label:15} {b:6d} {us:9.1f} {r_step / 1e6:20.2f} {r_run / 1e6:8.2f} "
            f"{r_cpu / 1e6:8.2f} {r_t / 1e6:8.2f} {r_run / r_t:8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
