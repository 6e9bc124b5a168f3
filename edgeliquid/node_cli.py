"""Subcommands of the onboard node, the simulator and the demo (added by later modules)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction, fmt) -> None:
    return None
