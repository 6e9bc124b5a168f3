"""Subcommands of the onboard node, the simulator and the demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .cli import command


def add_parsers(sub: argparse._SubParsersAction, fmt) -> None:
    s = sub.add_parser("run", formatter_class=fmt, help="run the onboard node (sense -> infer -> actuate)")
    s.add_argument("--config", required=True, help="node YAML config")
    s.add_argument("--seconds", type=float, default=None, help="stop after this long (default: forever)")
    s.add_argument("-v", "--verbose", action="store_true")

    s = sub.add_parser("sim", formatter_class=fmt, help="simulated robot device speaking protocol v1")
    s.add_argument("--plant", default="cartpole", choices=["cartpole"])
    s.add_argument(
        "--port",
        default="pty",
        help="'pty' (prints the node's path), 'tcp-listen:[HOST:]PORT' "
        "(the node connects to socket://HOST:PORT), or a pyserial URL/path",
    )
    s.add_argument("--rate", type=float, default=100.0, help="sensor rate, Hz")
    s.add_argument("--protocol", default="cobs", choices=["cobs", "text"])
    s.add_argument("--noise", type=float, default=0.0, help="sensor noise std (sensor units)")
    s.add_argument("--jitter", type=float, default=0.0, help="sample-time jitter, fraction of the period")
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser(
        "demo", formatter_class=fmt, help="simulator + node over a pty: a liquid policy balances a cart-pole"
    )
    s.add_argument("--seconds", type=float, default=15.0)
    s.add_argument("--rate", type=float, default=100.0, help="sensor rate, Hz")
    s.add_argument("--mode", default="event", choices=["event", "fixed"])
    s.add_argument("--plant", default="cartpole", choices=["cartpole"])
    s.add_argument("--protocol", default="cobs", choices=["cobs", "text"])
    s.add_argument(
        "--fault",
        default=None,
        choices=["stall", "corrupt", "nan"],
        help="inject a fault 40%% into the run for 0.3 s",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--config", default=None, help="node config (default: configs/cartpole_demo.yaml)")
    s.add_argument("--json", action="store_true", help="print one final JSON object")
    s.add_argument(
        "--record",
        default="edgeliquid-demo.mcap",
        help="flight recording (MCAP) to write; '' to record nothing",
    )

    s = sub.add_parser(
        "replay",
        formatter_class=fmt,
        help="replay a flight recording offline; bit-exact check or per-channel diff",
    )
    s.add_argument("recording")
    s.add_argument("--model", help="another model file (default: the recorded one)")
    s.add_argument("--backend", choices=["cpu", "reference", "cuda"], help="default: the recorded one")
    s.add_argument("--dtype", choices=["float32", "float64"], help="default: the recorded one")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser(
        "profile", formatter_class=fmt, help="latency of a policy (.onnx), a recording (.mcap) or a live link"
    )
    s.add_argument("target", nargs="?", help="model .onnx or recording .mcap")
    s.add_argument("--backend", nargs="*", default=["cpu", "reference"], help="policy: backends")
    s.add_argument("--steps", type=int, default=20000, help="policy: timed steps")
    s.add_argument("--batch", type=int, default=None, help="policy: batch size")
    s.add_argument("--load", action="store_true", help="policy: repeat with every core kept busy")
    s.add_argument("--link", help="live: play the device on this port/URL against a running node")
    s.add_argument("--rate", type=float, default=1000.0, help="live: SENSOR rate, Hz")
    s.add_argument("--seconds", type=float, default=10.0, help="live: duration")
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
    s.add_argument("--plot", help="write a PNG (histogram, percentile curve, timeline)")
    s.add_argument("--baseline", help="an earlier --json output: print ratios per percentile")


@command
def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import format_report, replay

    r = replay(args.recording, model=args.model, backend=args.backend, dtype=args.dtype)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


def _profile_wakeup(args: argparse.Namespace) -> int:
    from .config import load_config
    from .realtime import probe_wakeups

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
        f"wake-up lateness of an idle loop at {r['rate_hz']:.0f} Hz for {r['seconds']:.0f} s "
        f"({shown or 'no realtime settings'}):\n"
        f"  ticks {r['ticks']}, p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs, "
        f"p99.9 {lat['p99.9']:.0f} µs, max {lat['max']:.0f} µs\n"
        f"  ticks a fixed-mode node would miss here doing no work at all: {r['missed']}"
    )
    return 0


@command
def cmd_profile(args: argparse.Namespace) -> int:
    from . import profile as pf

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
    elif args.target and args.target.endswith(".mcap"):
        r = pf.profile_recording(args.target)
        text = pf.table(
            f"{args.target}: {r['steps']} steps at {r['rate_hz']:.0f} Hz, "
            f"{r['deadline_misses']} deadline misses (period > 1.5x nominal)",
            {
                **{f"stage {k}": v for k, v in r["stages"].items()},
                "loop period": r["period"],
                **({"end to end": r["end_to_end"]} if r["end_to_end"] else {}),
            },
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
        with open(args.baseline) as f:
            ratios = pf.with_baseline(pf.public(r), json.load(f))
        text += "\nratio to baseline (new / old):\n" + "\n".join(
            f"  {name:18}" + "".join(f"{k}={v:.2f}  " for k, v in rr.items()) for name, rr in ratios.items()
        )
    print(pf.dumps(r) if args.json else text)
    return 0


@command
def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .node import Node

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    node = Node(load_config(args.config))
    node.install_signals()
    node.run(args.seconds)
    return 0


@command
def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import open_device

    dev = open_device(
        args.port,
        plant=args.plant,
        rate_hz=args.rate,
        protocol=args.protocol,
        noise=args.noise,
        jitter=args.jitter,
        seed=args.seed,
    )
    if dev.node_port:
        print(f"device ready; point the node at serial.port: {dev.node_port}", flush=True)
    st = dev.run(args.seconds)
    print(json.dumps({"sent": st.sent, "actuations": st.actuations, "max_abs_angle": st.max_abs_angle}))
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, quiet_logging, run_demo

    quiet_logging()
    s = run_demo(
        seconds=args.seconds,
        rate_hz=args.rate,
        mode=args.mode,
        plant=args.plant,
        fault=args.fault,
        protocol=args.protocol,
        seed=args.seed,
        config=args.config,
        live=not args.json,
        out=sys.stderr,
        record=args.record or None,
    )
    s.pop("_device", None)
    print(json.dumps(s) if args.json else format_summary(s))
    return 0
