"""Commands that make artifacts from a model: ``export`` (ncps checkpoint -> model file) and
``firmware`` (model file -> C99)."""

from __future__ import annotations

import argparse
import sys

from . import args as ca
from .registry import command


def add_parsers(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    """Add this group's subcommands to the ``edgeliquid`` parser."""
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
        "(LTC: ode_unfolds, epsilon, implicit_param_constraints; CfC: mode, activation; "
        "see docs/export.md)",
    )
    s.add_argument(
        "--assume-defaults",
        action="store_true",
        help="state_dict only: take ncps' defaults for what --spec does not state, "
        "with a warning each and 'assumed' recorded in the model file",
    )

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
    if getattr(c, "cell", "ltc") == "cfc":
        bb = f"backbone {c.backbone_layers}x{c.backbone_units}"
        body = f"wired {list(c.layer_sizes)}" if c.wired else bb
        kind, detail = "CfC", f"mode {c.mode}, {body}, proj {c.proj_size or 'none'}"
    else:
        kind, detail = "LTC", f"{c.ode_unfolds} unfolds, positivity {c.positivity}"
    print(
        f"wrote {args.output}: {kind} {c.units} units, {c.n_inputs} inputs, {c.n_outputs} outputs, "
        f"{detail}, mixed memory {c.mixed_memory}"
    )
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
