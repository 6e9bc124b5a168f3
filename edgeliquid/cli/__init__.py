"""The ``edgeliquid`` command: one thin module per command group over library functions.

The top layer: may import anything; nothing imports it.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
