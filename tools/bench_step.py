#!/usr/bin/env python3
"""Step-latency benchmark at the fixed sizes of BENCHMARKS.md (needs the export extra).

Models: AutoNCP 19 units / 8 inputs / 1 output (the driving-NCP size), and
FullyConnected 64 and 256 units with 32 inputs; CfC: ``CfC(8, 32)`` (default backbone
128 x 1) and wired ``CfC(8, AutoNCP(19, 2))``, against ncps torch stepping the cell and
onnxruntime (1 thread) on ``torch.onnx.export`` of it. Every peer runs in this one
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

import numpy as np
import torch
from ncps.torch import LTC, CfC
from ncps.wirings import AutoNCP, FullyConnected

from edgeliquid.model.cfc import CfCConfig, CfCModel, cfc_expected_shapes
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


CFC_SIZES = {
    "cfc-8-32": lambda: CfC(8, 32),
    "cfc-wired-ncp-19": lambda: CfC(8, AutoNCP(19, 2)),
}


def cfc_model_of(module) -> CfCModel:
    """An ncps CfC module -> CfCModel (names without ``rnn_cell.``; backbone Linears renumbered)."""
    sd = {k.removeprefix("rnn_cell."): v.detach().double().numpy() for k, v in module.state_dict().items()}
    cell = module.rnn_cell
    wired = hasattr(cell, "layer_sizes")
    if wired:
        sizes = tuple(cell.layer_sizes)
        cfg = CfCConfig(module.input_size, cell.state_size, layer_sizes=sizes, backbone_layers=0)
    else:
        bb = [m for m in cell.backbone if isinstance(m, torch.nn.Linear)] if cell.backbone_layers else []
        cfg = CfCConfig(
            module.input_size,
            module.state_size,
            mode=cell.mode,
            backbone_units=bb[0].out_features if bb else 128,
            backbone_layers=len(bb),
        )
        idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("backbone.")})
        for n, i in enumerate(idx):
            sd[f"backbone.{n}.weight"] = sd.pop(f"backbone.{i}.weight")
            sd[f"backbone.{n}.bias"] = sd.pop(f"backbone.{i}.bias")
    params = {k: v for k, v in sd.items() if k in cfc_expected_shapes(cfg)}
    return CfCModel(cfg, params)


def bench_cfc(module, steps: int, batch: int, batch_steps: int) -> dict:
    """cpu, reference, ncps torch (cell step) and onnxruntime (torch export of the cell), µs/step."""
    from edgeliquid.observe.bench import _summary, _timings
    from edgeliquid.runtime.policy import from_model

    module = module.eval()
    model = cfc_model_of(module)
    cfg = model.config
    x = np.random.default_rng(0).uniform(-1, 1, cfg.n_inputs).astype(np.float32)
    cpu = from_model(model, "cpu", np.float32)
    ref = from_model(model, "reference", np.float32)
    cell, h = module.rnn_cell, {"h": torch.zeros(1, cfg.units)}
    ts = torch.ones(1, 1)

    def torch_step(x):
        with torch.no_grad():
            y, h["h"] = cell(torch.from_numpy(x)[None], h["h"], ts)
        return y

    peers = {"cpu": lambda: cpu.step(x, 1.0), "reference": lambda: ref.step(x, 1.0)}
    peers["ncps_torch"] = lambda: torch_step(x)
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cell.onnx"
            args = (torch.zeros(1, cfg.n_inputs), torch.zeros(1, cfg.units), torch.ones(1, 1))
            torch.onnx.export(cell, args, str(path), input_names=["x", "h", "ts"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"x": x[None], "h": np.zeros((1, cfg.units), np.float32), "ts": np.ones((1, 1), np.float32)}

        def ort_step():
            out = sess.run(None, feed)
            feed["h"] = out[-1]
            return out[0]

        peers["onnxruntime"] = ort_step
    except Exception as exc:  # an exporter/runtime version that cannot take the cell: report, go on
        print(f"  onnxruntime peer skipped: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
    r: dict = {"peers": {}, "steps": steps}
    for name, fn in peers.items():
        r["peers"][name] = _summary(_timings(fn, steps if name == "cpu" else max(200, steps // 10)))
    base = r["peers"]["cpu"]["p50"]
    r["ratios_p50_vs_cpu"] = {k: v["p50"] / base for k, v in r["peers"].items()}
    if batch:
        pol = from_model(model, "cpu", np.float32, batch=batch)
        xb = np.random.default_rng(1).uniform(-1, 1, (batch, cfg.n_inputs)).astype(np.float32)
        eb = np.random.default_rng(2).uniform(0.5, 1.5, batch)  # per-row elapsed
        us = _timings(lambda: pol.step(xb, eb), batch_steps, warmup=5)
        r["batch"] = {
            "size": batch,
            "p50_us": float(np.median(us)),
            "instance_steps_per_s": float(batch / np.median(us) * 1e6),
        }
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--json", help="also write all results here")
    ap.add_argument("--only", choices=["ltc", "cfc"], help="run only the LTC or only the CfC rows")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.processor()}",
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (n_in, wiring) in SIZES.items() if args.only != "cfc" else ():
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
    for name, make in CFC_SIZES.items() if args.only != "ltc" else ():
        r = bench_cfc(make(), args.steps, args.batch, 200)
        out["results"][name] = r
        print(format_table(name, r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
