"""``edgeliquid fleet replay`` and ``edgeliquid fleet sweep``: jobs over many recordings or rollouts."""

from __future__ import annotations

import argparse
import json

from . import args as ca
from .registry import command


def _engine_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray: alone, a local Ray on this machine; with an ADDRESS (ray://host:10001, "
        "host:6379, auto), join that cluster (pip install -e '.[fleet]'); default: in-process",
    )
    s.add_argument(
        "--workers", type=ca.positive_int, help="--ray alone: CPUs of the local Ray (default: all)"
    )
    s.add_argument("--json", metavar="OUT", help="write the full report as JSON to OUT ('-': stdout)")
    s.add_argument("--plot", metavar="PNG", help="write a picture of the result")
    s.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def add_parsers(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    """Add ``fleet`` and its subcommands to the ``edgeliquid`` parser."""
    p = sub.add_parser(
        "fleet", formatter_class=fmt, help="shadow replay over many recordings; closed-loop robustness sweeps"
    )
    fs = p.add_subparsers(
        dest="fleet_command",
        required=True,
        metavar="SUBCOMMAND",
        help="replay: shadow evaluation over flight recordings; sweep: closed-loop robustness sweeps",
    )

    s = fs.add_parser(
        "replay", formatter_class=fmt, help="a candidate model through many flight recordings, compared"
    )
    s.add_argument("recordings", nargs="+", metavar="RECORDING", help="recordings (.mcap), folders or globs")
    s.add_argument("--model", required=True, help="the candidate model file (.onnx)")
    s.add_argument(
        "--baseline", help="compare with this model on the same inputs (default: the recorded outputs)"
    )
    s.add_argument(
        "--threshold",
        type=ca.nonneg_float,
        default=0.05,
        help="|output difference| that counts as a divergence",
    )
    s.add_argument("--worst", type=ca.nonneg_int, default=10, help="list this many most different recordings")
    _engine_args(s)

    s = fs.add_parser("sweep", formatter_class=fmt, help="closed-loop rollouts over a grid of conditions")
    s.add_argument(
        "--model", required=True, action="append", help="model file (.onnx); twice to compare two models"
    )
    s.add_argument("--plant", default="cartpole", choices=["cartpole"], help="the simulated plant")
    s.add_argument("--grid", required=True, help="the conditions (YAML; see docs/fleet.md)")
    s.add_argument("--rollouts", type=ca.int_range(1, 1_000_000), default=256, help="rollouts per condition")
    s.add_argument(
        "--seconds", type=ca.float_range(0.0, 3600.0, lo_open=True), default=10.0, help="per rollout"
    )
    s.add_argument("--axes", nargs=2, metavar=("X", "Y"), help="--plot: the two grid axes of the map")
    s.add_argument(
        "--differ",
        type=ca.nonneg_int,
        default=10,
        help="two models: list this many most different conditions",
    )
    _engine_args(s)


def _write_json(r: dict, out: str) -> None:
    text = json.dumps(r, indent=2)
    if out == "-":
        print(text)
    else:
        with open(out, "w") as f:
            f.write(text + "\n")


@command
def cmd_fleet(args: argparse.Namespace) -> int:
    from ..fleet.engine import Engine

    with Engine(args.ray, args.workers) as engine:
        if args.fleet_command == "replay":
            from ..fleet import replay as fr

            r = fr.fleet_replay(
                args.recordings,
                args.model,
                baseline=args.baseline,
                threshold=args.threshold,
                worst=args.worst,
                engine=engine,
                progress=not args.quiet,
            )
            text = fr.format_report(r)
            plot = fr.plot
        else:
            from ..fleet import sweep as fs

            r = fs.fleet_sweep(
                args.model,
                args.grid,
                plant=args.plant,
                rollouts=args.rollouts,
                seconds=args.seconds,
                engine=engine,
                progress=not args.quiet,
                differ=args.differ,
            )
            text = fs.format_report(r)

            def plot(r, path):
                fs.plot(r, path, axes=args.axes)

    if args.json:
        _write_json(r, args.json)
    if args.json != "-":
        print(text)
    if args.plot:
        plot(r, args.plot)
    return 0
