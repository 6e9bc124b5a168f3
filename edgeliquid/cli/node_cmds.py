"""Commands of the robot side: the onboard node (``run``), the simulated robot (``sim``) and the demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import args as ca
from .registry import command


def add_parsers(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    """Add this group's subcommands to the ``edgeliquid`` parser."""
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
    s.add_argument(
        "--model",
        default=None,
        help="model file to drive the robot instead of the config's (e.g. the shipped CfC policy "
        "edgeliquid/data/cartpole_cfc.onnx)",
    )
    s.add_argument(
        "--controller",
        default="node",
        choices=["node", "firmware"],
        help="who controls the robot: the Python node, or the generated bare-metal app on an "
        "emulated Cortex-M4 (qemu mps2-an386, its UART on a pty; needs arm-none-eabi-gcc and qemu)",
    )
    s.add_argument("--json", action="store_true", help="print one final JSON object")
    s.add_argument(
        "--record",
        default="edgeliquid-demo.mcap",
        help="flight recording (MCAP) to write; '' to record nothing",
    )


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
        model=args.model,
        live=not args.json,
        out=sys.stderr,
        record=args.record or None,
        pushes=pushes,
        random_push_count=args.random_pushes,
        controller=args.controller,
    )
    s.pop("_device", None)
    print(json.dumps(s) if args.json else format_summary(s))
    return 0
