"""The subcommand registry: each command module registers its ``cmd_*`` functions here."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Register ``cmd_NAME`` as the handler of ``edgeliquid NAME``."""
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn
