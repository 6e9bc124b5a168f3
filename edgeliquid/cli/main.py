"""The ``edgeliquid`` command line: thin subcommands over library functions.

Each subcommand parses its arguments, calls one library function, prints, and
returns an exit code; ``main(argv)`` lets tests drive it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import EdgeliquidError
from . import args as ca
from .registry import COMMANDS, command


@command
def cmd_export(args: argparse.Namespace) -> int:
    import warnings

    from ..model.export import AssumedDefaultWarning, export_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AssumedDefaultWarning)
        model = export_checkpoint(
            args.checkpoint,
            args.output,
            trust_pickle=args.trust_pickle,
            key=args.key,
            spec=args.spec,
            assume_defaults=args.assume_defaults,
        )
    for w in caught:  # ours as one line each; anything else as Python would show it
        if issubclass(w.category, AssumedDefaultWarning):
            print(f"edgeliquid export: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    c = model.config
    print(
        f"wrote {args.output}: LTC {c.units} units, {c.n_inputs} inputs, {c.n_outputs} outputs, "
        f"{c.ode_unfolds} unfolds, positivity {c.positivity}, mixed memory {c.mixed_memory}"
    )
    return 0


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
def cmd_firmware(args: argparse.Namespace) -> int:
    from firmware_export import export_firmware

    m = export_firmware(
        args.model,
        args.output,
        args.name,
        fixed_point=args.fixed_point,
        fast_sigmoid=args.fast_sigmoid,
        min_elapsed=args.min_elapsed,
    )
    from pathlib import Path

    print(
        f"wrote {Path(args.output) / args.name}.h, {args.name}.c, edgeliquid_proto.h/.c, manifest.json "
        f"({m['variant']}; ~{m['flash_params_bytes_estimate']} B of weights in flash, "
        f"{m['state_bytes_caller_owned']} B state)"
    )
    if m["input_normalization"]:
        n = args.name
        print(f"inputs are normalised as in training: call {n}_normalize(raw, x) before {n}_step")
    return 0


def version() -> str:
    """The installed distribution's version (the package's ``__version__`` when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("edgeliquid")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    fmt = ca.HelpFormatter  # a real default is shown once, by the formatter, never by hand
    p = argparse.ArgumentParser(
        prog="edgeliquid", formatter_class=fmt, description="Liquid neural networks on robots."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "export", formatter_class=fmt, help="convert an ncps torch checkpoint to an edgeliquid .onnx file"
    )
    s.add_argument("checkpoint", help="ncps torch checkpoint (.pt: a module, a state_dict or a dict)")
    s.add_argument("-o", "--output", required=True, help="model file to write (.onnx)")
    s.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a whole module (runs code from the file)",
    )
    s.add_argument("--key", help="entry of a dict checkpoint holding the state_dict")
    s.add_argument(
        "--spec",
        help="state_dict only: YAML of the ncps constructor arguments it lacks "
        "(ode_unfolds, epsilon, implicit_param_constraints, ...; see docs/export.md)",
    )
    s.add_argument(
        "--assume-defaults",
        action="store_true",
        help="state_dict only: take ncps' defaults for what --spec does not state, "
        "with a warning each and 'assumed' recorded in the model file",
    )

    s = sub.add_parser("inspect", formatter_class=fmt, help="sizes, wiring and LTC bounds of a model")
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

    s = sub.add_parser("firmware", formatter_class=fmt, help="generate C99 for microcontrollers")
    s.add_argument("model", help="model file (.onnx)")
    s.add_argument("-o", "--output", required=True, help="directory for NAME.h/.c and the codec")
    s.add_argument(
        "--name",
        default="policy",
        help="C prefix and file stem (NAME_step, NAME.h): a letter, then letters, digits or _, "
        "at most 48; not a C keyword or standard header name",
    )
    s.add_argument("--fixed-point", action="store_true", help="int32 Q-format variant (no FPU)")
    s.add_argument(
        "--fast-sigmoid",
        action="store_true",
        help="float variant: polynomial exp, |error| <= 1e-6, no libm call",
    )
    s.add_argument(
        "--min-elapsed",
        type=ca.positive_float,
        default=0.01,
        help="fixed point: smallest elapsed time (model units) the Q format must cover",
    )

    from . import node_cmds as node_cli  # the node, simulator and demo add their subcommands

    node_cli.add_parsers(sub, fmt)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EdgeliquidError as exc:
        print(f"edgeliquid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
