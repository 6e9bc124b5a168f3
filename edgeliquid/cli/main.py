"""The ``edgeliquid`` command line: thin subcommands over library functions.

Each subcommand parses its arguments, calls one library function, prints, and
returns an exit code; ``main(argv)`` lets tests drive it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import EdgeliquidError
from . import args as ca
from . import fleet_cmds, model_cmds, node_cmds, observe_cmds
from .registry import COMMANDS


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

    for group in (model_cmds, observe_cmds, node_cmds, fleet_cmds):
        group.add_parsers(sub, fmt)
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
    except BrokenPipeError:  # `edgeliquid profile ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
