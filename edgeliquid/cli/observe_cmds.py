"""Commands that look at models and runs: ``inspect``, ``bench``, ``replay``, ``profile``, ``tune``."""

from __future__ import annotations

import argparse
import json

from . import args as ca
from .registry import command


def add_parsers(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    """Add this group's subcommands to the ``edgeliquid`` parser."""
    s = sub.add_parser("inspect", formatter_class=fmt, help="sizes, wiring and LTC or CfC bounds of a model")
    s.add_argument("model", help="model file (.onnx)")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("bench", formatter_class=fmt, help="step latency of every backend side by side")
    s.add_argument("model", help="model file (.onnx)")
    s.add_argument(
        "--steps",
        type=ca.positive_int,
        default=5000,
        help="timed steps for the cpu backend (the others: a tenth, at least 200)",
    )
    s.add_argument("--batch", type=ca.nonneg_int, default=1024, help="batch size for throughput (0: skip)")
    s.add_argument("--float64", action="store_true", help="run the backends in float64")
    s.add_argument(
        "--backend",
        default="all",
        choices=["all", "cuda"],
        help="'cuda': batched GPU throughput sweep instead of the side-by-side table",
    )
    s.add_argument(
        "--cuda-batches",
        type=ca.positive_int,
        nargs="+",
        default=[1, 64, 1024, 65536],
        help="--backend cuda: batch sizes to sweep",
    )
    s.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser(
        "replay",
        formatter_class=fmt,
        help="replay a flight recording offline; bit-exact check or per-channel diff",
    )
    s.add_argument("recording", help="flight recording (.mcap) written by the node or the demo")
    s.add_argument("--model", help="another model file (default: the recorded one)")
    s.add_argument("--backend", choices=["cpu", "reference", "cuda"], help="default: the recorded one")
    s.add_argument("--dtype", choices=["float32", "float64"], help="default: the recorded one")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser(
        "profile", formatter_class=fmt, help="latency of a policy (.onnx), a recording (.mcap) or a live link"
    )
    s.add_argument("target", nargs="?", help="model .onnx or recording .mcap")
    s.add_argument(
        "--backend",
        nargs="+",
        choices=["cpu", "reference", "cuda"],
        default=["cpu", "reference"],
        help="policy: backends to time",
    )
    s.add_argument("--steps", type=ca.positive_int, default=20000, help="policy: timed steps")
    s.add_argument(
        "--batch",
        type=ca.positive_int,
        default=None,
        help="policy: batch size (default: one unbatched instance)",
    )
    s.add_argument("--load", action="store_true", help="policy: repeat with every core kept busy")
    s.add_argument("--link", help="live: play the device on this port/URL against a running node")
    s.add_argument(
        "--rate", type=ca.rate_hz, default=1000.0, help="--link, --wakeup: tick rate, Hz (1 to 100000)"
    )
    s.add_argument(
        "--seconds", type=ca.positive_float, default=10.0, help="--link, --wakeup: duration, seconds"
    )
    s.add_argument(
        "--wakeup",
        action="store_true",
        help="machine: how late an idle loop ticking at --rate wakes (cyclictest-like), with the "
        "realtime settings of --config; its misses are the floor under the node's fixed mode",
    )
    s.add_argument("--config", help="--wakeup: take realtime settings (and spin_us) from this node config")
    s.add_argument("--trace-tau", action="store_true", help="policy: liquid time constants over a run")
    s.add_argument("--input", help="--trace-tau: a recording whose inputs to use")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument(
        "--plot",
        help="write a PNG: a policy's latency distributions; a recording's stage latencies, loop period, "
        "deadline misses and mode/event timeline",
    )
    s.add_argument("--baseline", help="an earlier --json output: print ratios per percentile")

    s = sub.add_parser(
        "tune",
        formatter_class=fmt,
        help="LTC: every solver x unfolds against the trained integration: error, µs per step, stability",
    )
    s.add_argument("model", help="model file (.onnx)")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--input", help="a flight recording (.mcap): its inputs, elapsed times and resets")
    src.add_argument(
        "--random",
        type=ca.int_range(1, 1_000_000),
        metavar="T",
        help="T seeded random input steps at --elapsed (default when no --input: 1000)",
    )
    s.add_argument(
        "--elapsed", type=ca.positive_float, default=1.0, help="--random: model time units per step"
    )
    s.add_argument("--seed", type=ca.nonneg_int, default=0, help="--random: seed")
    s.add_argument(
        "--tolerance",
        type=ca.nonneg_float,
        default=1e-3,
        help="largest relative output error accepted (per channel / the trained output's max |y|)",
    )
    s.add_argument("--solvers", nargs="+", choices=ca.SOLVER_CHOICES, help="solvers to try (default: all)")
    s.add_argument(
        "--max-unfolds", type=ca.int_range(1, ca.UNFOLDS_MAX), default=12, help="candidates use 1..N unfolds"
    )
    s.add_argument("--repeats", type=ca.positive_int, default=7, help="timing blocks per candidate")
    s.add_argument("--json", action="store_true", help="print the table as a JSON list of objects")
    s.add_argument("--plot", help="write a PNG: relative error vs µs per step (log-log)")
    s.add_argument("-o", "--output", help="write the chosen candidate as a model file (edgeliquid convert)")


@command
def cmd_inspect(args: argparse.Namespace) -> int:
    from ..model.file import read
    from ..model.inspect import describe, format_text, to_json

    d = describe(read(args.model))
    print(to_json(d) if args.json else format_text(d))
    return 0


@command
def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    from ..model.file import read
    from ..observe.bench import bench_model, format_table

    if args.backend == "cuda":
        from ..runtime.cuda import bench_cuda

        print(json.dumps(bench_cuda(read(args.model), batches=args.cuda_batches), indent=2))
        return 0
    dtype = np.float64 if args.float64 else np.float32
    r = bench_model(read(args.model), args.model, steps=args.steps, batch=args.batch, dtype=dtype)
    print(json.dumps(r, indent=2) if args.json else format_table(args.model, r))
    return 0


@command
def cmd_replay(args: argparse.Namespace) -> int:
    from ..observe.replay import format_report, replay

    r = replay(args.recording, model=args.model, backend=args.backend, dtype=args.dtype)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


def _profile_wakeup(args: argparse.Namespace) -> int:
    from ..node.config import load_config
    from ..node.realtime import probe_wakeups

    settings, spin_us = {}, 0.0
    if args.config:
        c = load_config(args.config)
        settings, spin_us = c.realtime_settings(), c.spin_us
    r = probe_wakeups(args.rate, args.seconds, spin_us, **settings)
    r["settings"] = {**settings, "spin_us": spin_us}
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    lat = r["lateness_us"]
    shown = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if v is not None and v is not False)
    print(
        f"wake-up lateness of an idle loop at {r['rate_hz']:.0f} Hz for {r['seconds']:g} s "
        f"({shown or 'no realtime settings'}):\n"
        f"  ticks {r['ticks']}, p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs, "
        f"p99.9 {lat['p99.9']:.0f} µs, max {lat['max']:.0f} µs\n"
        f"  ticks a fixed-mode node would miss here doing no work at all: {r['missed']}"
    )
    return 0


@command
def cmd_profile(args: argparse.Namespace) -> int:
    from ..errors import EdgeliquidError
    from ..node.recorder import is_recording
    from ..observe import profile as pf

    if args.wakeup:
        return _profile_wakeup(args)
    if args.link:
        r = pf.profile_link(args.link, rate_hz=args.rate, seconds=args.seconds)
        text = pf.table(
            f"round trip at {args.rate:.0f} Hz over {args.link} (µs, coordinated omission "
            f"corrected): sent {r['sent']}, lost {r['lost']}, late {r['late']}",
            {"corrected": r, "uncorrected": r["uncorrected"]},
        )
        text += "".join(f"\nWARNING: {w}" for w in r["warnings"])
    elif args.target and is_recording(args.target):
        r = pf.profile_recording(args.target)
        text = f"note: {r['note']}\n" if r["note"] else ""
        text += pf.table(
            f"{args.target}: {r['steps']} steps at {r['rate_hz']:.0f} Hz, "
            f"{r['deadline_misses']} deadline misses, {r['ticks_missed']} ticks missed "
            f"({r['deadline_rule']})",
            {
                **{f"stage {k}": v for k, v in r["stages"].items()},
                "loop period": r["period"],
                **({"end to end": r["end_to_end"]} if r["end_to_end"] else {}),
            },
        )
        if r["fused_share"] > 0:
            text += (
                f"\n{100 * r['fused_share']:.0f} % of the steps ran in the node's one compiled call per "
                "frame: decode, step and encode are all in 'infer' there (decode and encode read 0); "
                "'write' is the write to the port"
            )
        text += "\nevents:" + "".join(
            f"\n  {e['t_s']:9.3f} s  {e['kind']:10} {e['text']}" for e in r["events"]
        )
    elif args.target and args.trace_tau:
        r = pf.trace_tau(args.target, recording=args.input)
        text = (
            "liquid time constants (model time units) over the run; Theorem 1 bounds "
            + ("hold" if r["within_theorem1_bounds"] else "VIOLATED")
            + "\n"
            + "\n".join(
                f"  {n['id']:3d} {n['role']:8} observed "
                f"[{n['tau_observed_min']:.4g}, {n['tau_observed_max']:.4g}]"
                f" bound [{n['tau_min_bound']:.4g}, {n['tau_max_bound'] or float('inf'):.4g}]"
                for n in r["neurons"]
            )
        )
    elif args.target:
        r = pf.profile_policy(
            args.target, tuple(args.backend), steps=args.steps, batch=args.batch, load=args.load
        )
        text = pf.table(
            f"{args.target}: step latency (µs){' under load' if args.load else ''}", r["backends"]
        )
        text += "\n" + "\n".join(
            f"  {b}: cold first call {v['cold_first_call']:.0f} µs, jitter (std) "
            f"{v['jitter_std']:.2f} µs, {v['instance_steps_per_s']:.0f} "
            "instance-steps/s"
            for b, v in r["backends"].items()
        )
    else:
        raise SystemExit("edgeliquid profile: give a model, a recording, or --link PORT")
    if args.plot:
        pf.plot(r, args.plot)
    if args.baseline:
        try:
            with open(args.baseline) as f:
                old = json.load(f)
        except OSError as exc:
            raise EdgeliquidError(f"--baseline {args.baseline}: {exc.strerror or exc}") from None
        except ValueError:
            raise EdgeliquidError(
                f"--baseline {args.baseline}: not JSON (give an earlier --json output)"
            ) from None
        text += "\n" + pf.baseline_table(pf.with_baseline(pf.public(r), old))
    print(pf.dumps(r) if args.json else text)
    return 0


@command
def cmd_tune(args: argparse.Namespace) -> int:
    from ..errors import EdgeliquidError
    from ..model.convert import check_convert_output, convert_file
    from ..model.file import read
    from ..observe import tune as tu

    if args.output:
        check_convert_output(args.output, args.model)  # before the work, not after it
    model = read(args.model)
    if args.input:
        stream = tu.recording_stream(args.input, model)
    else:
        stream = tu.random_stream(model, args.random or 1000, args.elapsed, args.seed)
    r = tu.tune(
        model,
        stream,
        solvers=tuple(args.solvers or ca.SOLVER_CHOICES),
        max_unfolds=args.max_unfolds,
        tolerance=args.tolerance,
        repeats=args.repeats,
    )
    print(json.dumps(tu.json_rows(r), indent=2) if args.json else tu.format_table(r))
    if args.plot:
        tu.plot(r, args.plot)
    if args.output:
        c = r["chosen"]
        if c is None:
            raise EdgeliquidError(
                f"-o {args.output}: no stable candidate within tolerance {args.tolerance:g}; nothing written"
            )
        convert_file(args.model, args.output, c.solver, c.unfolds)
        if not args.json:
            print(f"wrote {args.output}: {c.solver}, {c.unfolds} unfolds")
    return 0
