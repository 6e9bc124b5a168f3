#!/usr/bin/env python3
"""Step-latency benchmark at the fixed sizes of BENCHMARKS.md (needs the export extra).

Models: AutoNCP 19 units / 8 inputs / 1 output (the driving-NCP size), and
FullyConnected 64 and 256 units with 32 inputs. Every peer runs in this one
process, so the ratios are comparable even on a noisy shared machine.

    python tools/bench_step.py [--steps N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from ncps.torch import LTC
from ncps.wirings import AutoNCP, FullyConnected

from edgeliquid.model.export import export_module
from edgeliquid.model.file import read
from edgeliquid.observe.bench import bench_model, format_table

SIZES = {
    "driving-ncp-19": (8, lambda: AutoNCP(19, 1)),
    "fc-64": (32, lambda: FullyConnected(64)),
    "fc-256": (32, lambda: FullyConnected(256)),
}


FRESH = """
import time
t0 = time.perf_counter()
import numpy as np
import edgeliquid
t1 = time.perf_counter()
p = edgeliquid.load({path!r})
p.step(np.zeros(p.n_inputs, np.float32))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def fresh_process_load(path: Path) -> dict[str, float]:
    """Seconds to import, and to load + warm a model, in a new process (cache warm: 2nd run)."""
    import subprocess
    import sys

    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", FRESH.format(path=str(path))], capture_output=True, text=True, check=True
        ).stdout.split()
    return {"import_s": float(out[0]), "load_and_warm_s": float(out[1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--json", help="also write all results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.processor()}",
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (n_in, wiring) in SIZES.items():
            path = Path(tmp) / f"{name}.onnx"
            export_module(LTC(n_in, wiring()), path)
            steps = args.steps if name != "fc-256" else max(200, args.steps // 20)
            r = bench_model(
                read(path),
                str(path),
                steps=steps,
                batch=args.batch,
                batch_steps=50 if name == "fc-256" else 200,
            )
            r["fresh_process"] = fresh_process_load(path)
            out["results"][name] = r
            print(format_table(name, r), flush=True)
            print(
                f"  fresh process: import {r['fresh_process']['import_s']:.2f} s, load + warm "
                f"{r['fresh_process']['load_and_warm_s']:.2f} s (on-disk cache warm)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
