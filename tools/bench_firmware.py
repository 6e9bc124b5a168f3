#!/usr/bin/env python3
"""Firmware numbers: flash/RAM per target, host ns/step against numba, M4 instructions/step.

Models: driving-size NCP (AutoNCP 19 units, 8 inputs, 1 output) and FullyConnected 64
(32 inputs); variants float32, float32 with the fast exp2 (``--fast-sigmoid``, the app's) and
fixed point, and for the driving NCP also the fast float and fixed point with ``--unroll
substeps`` and ``--unroll all`` (fc-64's 6144 synapses would unroll to ~0.5 MB of code); M4
instructions at -Os and at -O2 (the app's default), for the fixed point also of ``NAME_step_q``
(Q inputs and state: no float conversions). Needs gcc, arm-none-eabi-gcc,
qemu-system-arm and the export extra (torch, ncps).

    python tools/bench_firmware.py [--json out.json] [--model driving-ncp-19] [--no-host]

``--no-host`` skips the host timings (ns/step of the C and of numba: wall-clock, so they need
an idle machine; the instruction counts do not).

Instruction count: qemu runs the M4 build one instruction per translation block with
``-d exec``; (lines for 21 steps - lines for 1 step) / 20 = instructions per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ncps.torch import LTC
from ncps.wirings import AutoNCP, FullyConnected

import edgeliquid
from edgeliquid.model.export import export_module
from firmware_export import export_firmware
from firmware_export import harness as H

BENCH_MAIN = """#define _POSIX_C_SOURCE 199309L
#include "{name}.h"
#include <stdint.h>
#include <time.h>
#include <stdio.h>
int main(int argc, char **argv)
{{
    float s[{UP}_STATE_SIZE], x[{UP}_N_INPUTS], y[{UP}_N_OUTPUTS];
    long n = {steps}, t;
    int i;
    (void)argv;
    {name}_reset(s);
    for (i = 0; i < {UP}_N_INPUTS; ++i) x[i] = 0.1f * (float)(i + argc);
#ifdef TIMED
    {{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (t = 0; t < n; ++t) {{ x[0] = (float)(t & 7) * 0.05f; {name}_step(x, s, 1.0f, y); }}
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\\n", ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n);
    }}
#else
    for (t = 0; t < n; ++t) {{ x[0] = (float)(t & 7) * 0.05f; {name}_step(x, s, 1.0f, y); }}
#endif
    return y[0] > 1e30f;
}}
"""


#: The fixed-point variant's integer entry point, for a caller with Q inputs (no float conversions):
#: the same inputs as BENCH_MAIN, quantised once before the loop, elapsed 1.0 in Q.
BENCH_MAIN_Q = """#include "{name}.h"
#include <stdint.h>
int main(int argc, char **argv)
{{
    int32_t s[{UP}_STATE_SIZE], x[{UP}_N_INPUTS], y[{UP}_N_OUTPUTS];
    long n = {steps}, t;
    int i;
    (void)argv;
    for (i = 0; i < {UP}_STATE_SIZE; ++i) s[i] = 0;
    for (i = 0; i < {UP}_N_INPUTS; ++i) {{
        x[i] = (int32_t)(0.1f * (float)(i + argc) * (float)(1L << {UP}_Q_FRAC_BITS));
    }}
    for (t = 0; t < n; ++t) {{
        x[0] = (int32_t)((t & 7) * (1L << {UP}_Q_FRAC_BITS) / 20);
        {name}_step_q(x, s, (int32_t)1 << {UP}_Q_FRAC_BITS, y);
    }}
    return y[0] > 0x7fffffff - 1;
}}
"""


def insn_per_step(out: Path, name: str, opt: str | None = None, main: str = BENCH_MAIN) -> float:
    """M4 instructions per step: (21 steps - 1 step) / 20 under qemu's single-step trace; ``main``
    BENCH_MAIN_Q for NAME_step_q."""
    counts = []
    for steps in (1, 21):
        (out / "bench_main.c").write_text(main.format(name=name, UP=name.upper(), steps=steps))
        elf = H.build_m4(out, name, driver="bench_main.c", elf_name=f"insn{steps}.elf", opt=opt)
        counts.append(H.count_instructions(elf))
    return (counts[1] - counts[0]) / 20


def host_ns(out: Path, name: str) -> float:
    (out / "bench_main.c").write_text(BENCH_MAIN.format(name=name, UP=name.upper(), steps=200000))
    exe = out / "bench_host"
    subprocess.run(
        [
            "gcc",
            "-std=c99",
            "-O2",
            "-DTIMED",
            "-o",
            str(exe),
            str(out / "bench_main.c"),
            str(out / f"{name}.c"),
            "-lm",
        ],
        check=True,
    )
    return float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)


def numba_ns(path: Path) -> float:
    pol = edgeliquid.load(path)
    x = np.full(pol.n_inputs, 0.1, np.float32)
    for _ in range(1000):
        pol.step(x, 1.0)
    n = 20000
    t = time.perf_counter_ns()
    for _ in range(n):
        pol.step(x, 1.0)
    return (time.perf_counter_ns() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--model", choices=["driving-ncp-19", "fc-64"], help="only this model")
    ap.add_argument("--no-host", action="store_true", help="skip the host ns/step timings")
    args = ap.parse_args()
    torch.manual_seed(0)
    # both modules built in this order whatever --model says: the same weights either way
    models = [("driving-ncp-19", LTC(8, AutoNCP(19, 1))), ("fc-64", LTC(32, FullyConnected(64)))]
    variants = {
        "driving-ncp-19": (
            "float32",
            "float32-fast",
            "float32-fast-unroll-substeps",
            "float32-fast-unroll-all",
            "fixed",
            "fixed-unroll-substeps",
            "fixed-unroll-all",
        ),
        "fc-64": ("float32", "float32-fast", "fixed"),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, module in models:
            if args.model and label != args.model:
                continue
            path = tmp / f"{label}.onnx"
            export_module(module, path)
            nb = None if args.no_host else numba_ns(path)
            for variant in variants[label]:
                out = tmp / f"{label}-{variant}"
                m = export_firmware(
                    path,
                    out,
                    "pol",
                    fixed_point=variant.startswith("fixed"),
                    fast_sigmoid=variant.startswith("float32-fast"),
                    unroll=variant.split("-unroll-")[1] if "-unroll-" in variant else "none",
                )
                src = out / "pol.c"
                m4 = H.object_size(["arm-none-eabi-gcc"], out, src, H.M4_FLAGS)
                m4_o2 = H.object_size(["arm-none-eabi-gcc"], out, src, [*H.M4_FLAGS[:-1], "-O2"])
                m0 = H.object_size(["arm-none-eabi-gcc"], out, src, H.M0_FLAGS)
                row = {
                    "model": label,
                    "variant": variant,
                    "m4f_flash": m4["flash"],
                    "m4f_flash_O2": m4_o2["flash"],
                    "m4f_ram": m4["ram"],
                    "m0_flash": m0["flash"],
                    "m0_ram": m0["ram"],
                    "state_bytes": m["state_bytes_caller_owned"],
                    "stack_bytes_estimate": m["stack_bytes_estimate"],
                    "host_ns_step": None if args.no_host else host_ns(out, "pol"),
                    "numba_ns_step": nb,
                    "m4_insn_per_step": insn_per_step(out, "pol"),
                    "m4_insn_per_step_O2": insn_per_step(out, "pol", "-O2"),
                }
                if variant.startswith("fixed"):  # the Q entry point (no float conversions)
                    row["m4_insn_per_step_q"] = insn_per_step(out, "pol", None, BENCH_MAIN_Q)
                    row["m4_insn_per_step_q_O2"] = insn_per_step(out, "pol", "-O2", BENCH_MAIN_Q)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\n{'model':15} {'variant':28} {'M4F flash':>9} {'-O2':>6} {'M0 flash':>9} {'RAM':>4} "
        f"{'state B':>7} {'stack B':>7} {'host ns':>8} {'numba ns':>9} {'M4 insn -Os':>11} {'-O2':>7}"
    )

    def ns(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for r in rows:
        print(
            f"{r['model']:15} {r['variant']:28} {r['m4f_flash']:9d} {r['m4f_flash_O2']:6d} "
            f"{r['m0_flash']:9d} {r['m4f_ram']:4d} {r['state_bytes']:7d} {r['stack_bytes_estimate']:7d} "
            f"{ns(r['host_ns_step']):>8} {ns(r['numba_ns_step']):>9} {r['m4_insn_per_step']:11.0f} "
            f"{r['m4_insn_per_step_O2']:7.0f}"
            + (
                f"   NAME_step_q: -Os {r['m4_insn_per_step_q']:.0f}, -O2 {r['m4_insn_per_step_q_O2']:.0f}"
                if "m4_insn_per_step_q" in r
                else ""
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
