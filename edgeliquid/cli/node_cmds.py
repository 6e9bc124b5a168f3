"""Subcommands of the onboard node, the simulator and the demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import args as ca
from .registry import command


def add_parsers(sub: argparse._SubParsersAction, fmt) -> None:
    s = sub.add_parser("run", formatter_class=fmt, help="run the onboard node (sense -> infer -> actuate)")
    s.add_argument("--config", required=True, help="node YAML config")
    s.add_argument(
        "--seconds", type=ca.positive_float, default=None, help="stop after this long (default: forever)"
    )
    s.add_argument("-v", "--verbose", action="store_true", help="log every event at DEBUG level")
    s.add_argument(
        "--fail-fast",
        action="store_true",
        help="exit with an error if the port cannot be opened at start (default: retry with back-off)",
    )
    s.add_argument(
        "--check",
        action="store_true",
        help="validate the config and the model against each other (sizes, normalisation, the "
        "policy loads and steps within the period), print one line, exit 0 or 2; opens no port",
    )

    s = sub.add_parser("sim", formatter_class=fmt, help="simulated robot device speaking protocol v1")
    s.add_argument("--plant", default="cartpole", choices=["cartpole"], help="simulated plant")
    s.add_argument(
        "--port",
        default="pty",
        help="'pty' (prints the node's path), 'tcp-listen:[HOST:]PORT' "
        "(the node connects to socket://HOST:PORT), or a pyserial URL/path",
    )
    s.add_argument("--rate", type=ca.rate_hz, default=100.0, help="sensor rate, Hz (1 to 100000)")
    s.add_argument("--protocol", default="cobs", choices=["cobs", "text"], help="wire protocol")
    s.add_argument("--noise", type=ca.nonneg_float, default=0.0, help="sensor noise std (sensor units)")
    s.add_argument(
        "--jitter",
        type=ca.fraction_below_one,
        default=0.0,
        help="sample-time jitter, fraction of the period, in [0, 1)",
    )
    s.add_argument("--seconds", type=ca.positive_float, default=30.0, help="run this long, then exit")
    s.add_argument("--seed", type=ca.nonneg_int, default=0, help="random seed (initial state, noise)")

    s = sub.add_parser(
        "demo", formatter_class=fmt, help="simulator + node over a pty: a liquid policy balances a cart-pole"
    )
    s.add_argument("--seconds", type=ca.positive_float, default=15.0, help="length of the run")
    s.add_argument("--rate", type=ca.rate_hz, default=100.0, help="sensor rate, Hz (1 to 100000)")
    s.add_argument(
        "--mode",
        default="event",
        choices=["event", "fixed"],
        help="node loop: step on each sensor frame, or on a fixed tick at --rate",
    )
    s.add_argument("--plant", default="cartpole", choices=["cartpole"], help="simulated plant")
    s.add_argument("--protocol", default="cobs", choices=["cobs", "text"], help="wire protocol")
    s.add_argument(
        "--fault",
        default=None,
        choices=["stall", "corrupt", "nan"],
        help="inject a fault 40%% into the run for 0.3 s",
    )
    s.add_argument(
        "--push",
        type=ca.push,
        action="append",
        metavar="FORCE[@T]",
        help="shove the cart with FORCE newtons at T s into the run (default: halfway) for "
        "--push-duration; repeat for several pushes; a negative FORCE as --push=-10@3",
    )
    s.add_argument(
        "--push-duration", type=ca.positive_float, default=0.1, help="length of each push, seconds"
    )
    s.add_argument(
        "--random-pushes",
        type=ca.nonneg_int,
        default=0,
        metavar="K",
        help="K more pushes of random sign and 5-10 N at random times (seeded by --seed)",
    )
    s.add_argument("--seed", type=ca.nonneg_int, default=0, help="random seed (initial state, noise, pushes)")
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
    s.add_argument("--plot", help="write a PNG (histogram, percentile curve, timeline)")
    s.add_argument("--baseline", help="an earlier --json output: print ratios per percentile")


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
        f"wake-up lateness of an idle loop at {r['rate_hz']:.0f} Hz for {r['seconds']:.0f} s "
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
def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    # Signal handlers first, before the (slow) imports and the model load: a SIGTERM while
    # starting must end the process cleanly (exit 0, a log line), never kill it mid-load.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):  # default action would end the process; the load is fresh anyway
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    log = logging.getLogger("edgeliquid.node.loop")
    from ..node.config import load_config
    from ..node.loop import Node, check_deployment, load_policy_interruptible

    cfg = load_config(args.config)
    if args.check:
        print(check_deployment(cfg))
        return 0
    policy = None if stop.is_set() else load_policy_interruptible(cfg, stop)
    if policy is None:
        log.warning("stopped by a signal while starting; the port was never opened, nothing commanded")
        return 0
    node = Node(cfg, policy)
    node.install_signals()
    if stop.is_set():
        node.stop()
    node.run(args.seconds, fail_fast=args.fail_fast)
    return 0


@command
def cmd_sim(args: argparse.Namespace) -> int:
    from ..hil.sim import open_device

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
    from ..errors import EdgeliquidError
    from ..hil.demo import format_summary, quiet_logging, run_demo
    from ..hil.sim import Push

    quiet_logging()
    pushes = [
        Push(args.seconds / 2 if at is None else at, f, args.push_duration) for f, at in args.push or []
    ]
    for p in pushes:
        if p.at_s >= args.seconds:
            raise EdgeliquidError(
                f"--push {p.force_n:g}@{p.at_s:g}: the run is only --seconds {args.seconds:g}"
            )
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
        pushes=pushes,
        random_push_count=args.random_pushes,
    )
    s.pop("_device", None)
    print(json.dumps(s) if args.json else format_summary(s))
    return 0
