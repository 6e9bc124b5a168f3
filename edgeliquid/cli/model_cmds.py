"""Commands that make artifacts from a model: ``export`` (ncps checkpoint -> model file),
``convert`` (model file -> the same weights with another solver) and ``firmware`` (model file -> C99)."""

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
    s.add_argument(
        "checkpoint",
        help="ncps torch checkpoint (.pt: a module, a state_dict or a dict), or an ncps.keras "
        ".keras file (or model.weights.h5 with --spec)",
    )
    s.add_argument("-o", "--output", required=True, help="model file to write (.onnx)")
    s.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a whole module (runs code from the file)",
    )
    s.add_argument("--key", help="entry of a dict checkpoint holding the state_dict")
    s.add_argument(
        "--spec",
        help="YAML of the ncps constructor arguments a state_dict or Keras model.weights.h5 lacks "
        "(LTC: ode_unfolds, epsilon, implicit_param_constraints; CfC: mode, activation); with a "
        ".keras file, only an NCP wiring's seed (wiring: {seed: N}); see docs/export.md",
    )
    s.add_argument(
        "--assume-defaults",
        action="store_true",
        help="state_dict only: take ncps' defaults for what --spec does not state, "
        "with a warning each and 'assumed' recorded in the model file",
    )

    s = sub.add_parser(
        "convert",
        formatter_class=fmt,
        help="the same trained weights with another ODE solver or number of unfolds (LTC)",
    )
    s.add_argument("model", help="model file (.onnx)")
    s.add_argument("-o", "--output", required=True, help="model file to write (.onnx)")
    s.add_argument(
        "--solver",
        choices=ca.SOLVER_CHOICES,
        help="ODE solver (default: the file's)",
    )
    s.add_argument(
        "--unfolds",
        type=ca.int_range(1, ca.UNFOLDS_MAX),
        help=f"solver sub-steps per step, 1..{ca.UNFOLDS_MAX} (default: the file's)",
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
        "--unroll",
        nargs="?",
        const="all",
        default="none",
        choices=["all", "substeps"],
        help="LTC: straight-line code per synapse instead of loops, the same results in fewer "
        "instructions for ~90 B more flash per synapse: all (the default) or only the sub-steps' "
        "recurrent synapses (the sensory pass stays a loop)",
    )
    s.add_argument(
        "--min-elapsed",
        type=ca.positive_float,
        default=0.01,
        help="fixed point: smallest elapsed time (model units) the Q format must cover",
    )
    s.add_argument(
        "--max-elapsed",
        type=ca.positive_float,
        default=None,
        help="fixed point: largest elapsed time (model units; default 100); explicit_euler needs "
        "<= ode_unfolds x tau_min",
    )
    s.add_argument(
        "--app",
        choices=["mps2-an386"],
        default=None,
        help="also build a complete bare-metal controller for this board (qemu mps2-an386: Cortex-M4): "
        "OUT/NAME.elf, NAME.bin, Makefile; the policy's exp is the fast <= 2 ulp polynomial",
    )
    s.add_argument(
        "--config",
        default=None,
        help="--app: node config whose channel maps and fail-safe rules are compiled in "
        "(default: configs/cartpole_demo.yaml)",
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
def cmd_convert(args: argparse.Namespace) -> int:
    from ..errors import EdgeliquidError
    from ..model.convert import CONVERTED_FROM_KEY, convert_file, trained_integration
    from ..model.guarantees import stability

    if args.solver is None and args.unfolds is None:
        raise EdgeliquidError("give --solver and/or --unfolds (the integration to convert to)")
    src, out = convert_file(args.model, args.output, args.solver, args.unfolds)
    s, c = src.config, out.config
    solver, unfolds = trained_integration(out)
    print(f"read {args.model}: LTC {s.units} units, solver {s.solver}, {s.ode_unfolds} unfolds")
    print(
        f"wrote {args.output}: solver {c.solver}, {c.ode_unfolds} unfolds, same weights (trained with "
        f"{solver}, {unfolds} unfolds; converted from sha256 {out.info[CONVERTED_FROM_KEY][:12]}...)"
    )
    bound = stability(out)[c.solver]
    if bound["max_elapsed"] == float("inf"):
        print(f"stability: {c.solver} is unconditionally stable (any elapsed time)")
    else:
        print(
            f"stability (Theorem 1): stable for elapsed <= {bound['max_elapsed']:.4g} model time units "
            f"per step (sub-step <= {bound['max_substep']:.4g}); one ncps training sample is 1.0"
        )
    return 0


@command
def cmd_firmware(args: argparse.Namespace) -> int:
    from firmware_export import export_firmware

    if args.app:
        return _firmware_app(args)
    m = export_firmware(
        args.model,
        args.output,
        args.name,
        fixed_point=args.fixed_point,
        fast_sigmoid=args.fast_sigmoid,
        min_elapsed=args.min_elapsed,
        max_elapsed=args.max_elapsed,
        unroll=args.unroll,
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


def _firmware_app(args: argparse.Namespace) -> int:
    """``firmware --app BOARD``: the policy, the codec and the controller, built and measured."""
    from pathlib import Path

    from firmware_export.app import build_app

    from ..errors import EdgeliquidError

    if args.fixed_point:
        raise EdgeliquidError("--app builds the float32 policy; --fixed-point is not supported with --app")
    m = build_app(args.model, args.output, args.name, args.app, args.config, unroll=args.unroll)
    a = m["app"]
    out = Path(args.output)
    print(
        f"wrote {out / args.name}.elf, {args.name}.bin, Makefile and sources for {a['board']} "
        f"(image: {a['flash_bytes']} B flash, {a['ram_bytes']} B RAM incl. {a['stack_bytes']} B stack)"
    )
    ins = a.get("instructions", {})
    if "step_mean" in ins:
        print(
            f"instructions per control cycle on the emulated core: {ins['cycle_mean']} (policy step "
            f"{ins['step_mean']}); qemu -icount counts instructions, it is not cycle accurate"
        )
    else:
        print(ins.get("note", ""))
    return 0
