"""Old flat import paths (``edgeliquid.protocol``, ``edgeliquid.export``, ...) keep working.

edgeliquid 0.1 had one flat package; scripts that import the old module names get the
module at its new place (see docs/architecture.md), with a DeprecationWarning naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "modelfile": "model.file",
    "checks": "model.checks",
    "guarantees": "model.guarantees",
    "export": "model.export",
    "export_spec": "model.export_spec",
    "inspect": "model.inspect",
    "packing": "runtime.packing",
    "kernels": "runtime.kernels",
    "fastexp": "runtime.fastexp",
    "reference": "runtime.reference",
    "cuda_backend": "runtime.cuda",
    "cuda_kernels": "runtime.cuda_kernels",
    "protocol": "node.protocol",
    "textproto": "node.textproto",
    "config": "node.config",
    "channels": "node.channels",
    "realtime": "node.realtime",
    "recorder": "node.recorder",
    "replay": "observe.replay",
    "profile": "observe.profile",
    "bench": "observe.bench",
    "sim": "hil.sim",
    "demo": "hil.demo",
    "node_cli": "cli.node_cmds",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        head, _, tail = fullname.partition(".")
        if head == "edgeliquid" and tail in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module) -> None:
        new = "edgeliquid." + MOVED[module.__name__.partition(".")[2]]
        warnings.warn(f"{module.__name__} moved to {new}", DeprecationWarning, stacklevel=2)
        # The import system returns sys.modules[name] after exec_module: the real module.
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before editable-install finders that know the old paths
