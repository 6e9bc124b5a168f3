"""The package layout's rules: no import cycles, lower layers never import upper ones.

Walks every module's imports (module level and inside functions) with ``ast``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "edgeliquid"
# Layers, bottom to top: a module may import its own layer and the ones below.
LAYERS = ["errors", "model", "runtime", "node", "observe", "hil", "fleet", "cli"]
# The public facade (edgeliquid/__init__.py, __main__, the old-path aliases) sits above all.
FACADE = {"edgeliquid", "edgeliquid.__main__", "edgeliquid._moved"}
KERNELS = {
    "edgeliquid.runtime.kernels",
    "edgeliquid.runtime.cfc_kernels",
    "edgeliquid.runtime.fastexp",
    "edgeliquid.runtime.cuda_kernels",
}
IO_MODULES = {"serial", "socket", "select", "mcap", "yaml", "onnx", "subprocess", "threading", "pty"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules (and third-party top-level names) this module imports, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {i for i in imports_of(m, p, known) if i in known and i != m} for m, p in mods.items()}


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_every_module_is_in_a_layer():
    stray = sorted(m for m in modules() if m not in FACADE and layer(m) < 0)
    assert not stray, f"modules outside the layered subpackages: {stray}"


def test_no_upward_imports():
    bad = []
    for mod, deps in graph().items():
        if mod in FACADE:
            continue
        for d in deps:
            if d in FACADE - {"edgeliquid"} or (d not in FACADE and layer(d) > layer(mod)):
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports from a lower layer to an upper one: " + ", ".join(sorted(bad))


def test_kernels_import_no_io():
    mods = modules()
    bad = []
    for k in KERNELS:
        tree_imports = imports_of(k, mods[k], set(mods))
        for i in tree_imports:
            top = i.split(".")[0]
            if top in IO_MODULES or (i.startswith("edgeliquid.") and layer(i) > LAYERS.index("runtime")):
                bad.append(f"{k} -> {i}")
    assert not bad, f"kernels import I/O: {bad}"


def test_no_import_cycles():
    g = graph()
    # Submodules importing their own package's __init__ (to reach a sibling) are not cycles
    # of the design; every other back edge is.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if m.startswith(d + ".") and d in g:  # a module importing its own package
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_rule_checker_catches_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: plant a cycle and an upward import in a copy."""
    import shutil

    copy = tmp_path / "edgeliquid"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "model" / "cell.py").write_text(
        (copy / "model" / "cell.py").read_text() + "\nfrom ..node import loop  # planted\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PKG", copy)
    with pytest.raises(AssertionError, match=r"edgeliquid.model.cell -> edgeliquid.node.loop"):
        test_no_upward_imports()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


@pytest.mark.parametrize(
    "old,new",
    [
        ("export", "model.export"),
        ("protocol", "node.protocol"),
        ("modelfile", "model.file"),
        ("kernels", "runtime.kernels"),
        ("recorder", "node.recorder"),
        ("sim", "hil.sim"),
    ],
)
def test_old_import_paths_still_work(old, new):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module(f"edgeliquid.{old}")
    assert mod is importlib.import_module(f"edgeliquid.{new}")
    assert any(f"edgeliquid.{new}" in str(x.message) for x in w)


def test_old_names_on_packages_that_were_modules():
    from edgeliquid.model import CellConfig, LTCModel  # noqa: F401
    from edgeliquid.node import Node, NodeStats  # noqa: F401
    from edgeliquid.runtime import from_model, load  # noqa: F401


def test_codec_import_stays_light():
    """A simulator importing the codec does not drag in numba or the runtime."""
    code = (
        "import sys; import edgeliquid.node.protocol; "
        "print(int('numba' in sys.modules), int('edgeliquid.node.loop' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == "0"


def test_model_layer_solver_names_match_the_runtime():
    """The model layer names the solvers a file may carry; the runtime implements each."""
    from edgeliquid.model.cell import SOLVER_NAMES
    from edgeliquid.runtime.reference import SOLVERS

    assert set(SOLVER_NAMES) == set(SOLVERS)
