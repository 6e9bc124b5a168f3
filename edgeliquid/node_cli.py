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
    s.add_argument("--port", default="pty", help="'pty' (prints the node's path) or a pyserial URL/path")
    s.add_argument("--rate", type=float, default=100.0, help="sensor rate, Hz")
    s.add_argument("--protocol", default="cobs", choices=["cobs", "text"])
    s.add_argument("--noise", type=float, default=0.0, help="sensor noise std (sensor units)")
    s.add_argument("--jitter", type=float, default=0.0, help="sample-time jitter, fraction of the period")
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("demo", formatter_class=fmt,
                       help="simulator + node over a pty: a liquid policy balances a cart-pole")
    s.add_argument("--seconds", type=float, default=15.0)
    s.add_argument("--rate", type=float, default=100.0, help="sensor rate, Hz")
    s.add_argument("--mode", default="event", choices=["event", "fixed"])
    s.add_argument("--plant", default="cartpole", choices=["cartpole"])
    s.add_argument("--protocol", default="cobs", choices=["cobs", "text"])
    s.add_argument("--fault", default=None, choices=["stall", "corrupt", "nan"],
                   help="inject a fault 40%% into the run for 0.3 s")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--config", default=None, help="node config (default: configs/cartpole_demo.yaml)")
    s.add_argument("--json", action="store_true", help="print one final JSON object")


@command
def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .node import Node

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    node = Node(load_config(args.config))
    node.install_signals()
    node.run(args.seconds)
    return 0


@command
def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import open_device

    dev = open_device(args.port, plant=args.plant, rate_hz=args.rate, protocol=args.protocol,
                      noise=args.noise, jitter=args.jitter, seed=args.seed)
    if dev.node_port:
        print(f"device ready; point the node at serial.port: {dev.node_port}", flush=True)
    st = dev.run(args.seconds)
    print(json.dumps({"sent": st.sent, "actuations": st.actuations,
                      "max_abs_angle": st.max_abs_angle}))
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, quiet_logging, run_demo

    quiet_logging()
    s = run_demo(seconds=args.seconds, rate_hz=args.rate, mode=args.mode, plant=args.plant,
                 fault=args.fault, protocol=args.protocol, seed=args.seed, config=args.config,
                 live=not args.json, out=sys.stderr)
    s.pop("_device", None)
    print(json.dumps(s) if args.json else format_summary(s))
    return 0
