"""numba's cache is keyed on every kernel source (edgeliquid.runtime.jitcache): a change to any one
file must never reuse another module's cached code that inlined the old version."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeliquid.runtime import jitcache as _jitcache

PKG = Path(_jitcache.__file__).resolve().parent.parent


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for rel in ("runtime", "node", "fleet", "model"):
        (root / rel).mkdir(parents=True)
    (root / "runtime" / "kernels.py").write_text("A = 1\n")
    (root / "runtime" / "packing.py").write_text("HEADER = 45\n")
    (root / "node" / "framecodec.py").write_text("B = 2\n")
    (root / "node" / "syscalls.py").write_text("B2 = 2\n")
    (root / "node" / "loop.py").write_text("C = 3\n")
    (root / "fleet" / "plant.py").write_text("D = 4\n")
    (root / "model" / "cell.py").write_text("E = 5\n")
    return root


def test_key_changes_with_any_kernel_source_and_only_those(tmp_path):
    root = _tree(tmp_path)
    key = _jitcache.source_key(root)
    assert key == _jitcache.source_key(root)  # deterministic
    (root / "node" / "loop.py").write_text("C = 30\n")  # not compiled by numba
    (root / "model" / "cell.py").write_text("E = 50\n")
    assert _jitcache.source_key(root) == key
    seen = {key}
    kernels = (
        "runtime/packing.py",
        "runtime/kernels.py",
        "node/framecodec.py",
        "node/syscalls.py",
        "fleet/plant.py",
    )
    for rel in kernels:
        f = root / rel
        f.write_text(f.read_text() + "# edit\n")
        k = _jitcache.source_key(root)
        assert k not in seen, rel
        seen.add(k)
    (root / "runtime" / "new_kernels.py").write_text("F = 6\n")  # a new module counts too
    assert _jitcache.source_key(root) not in seen


def test_cache_dir_in_tree_or_under_the_users_numba_cache_dir(tmp_path):
    root = _tree(tmp_path)
    key = _jitcache.source_key(root)
    assert _jitcache.cache_dir(root, {}) == root / "__pycache__" / f"numba-{key}"
    user = tmp_path / "user-cache"
    assert _jitcache.cache_dir(root, {"NUMBA_CACHE_DIR": str(user)}) == user / f"edgeliquid-{key}"


def test_the_runtime_compiles_into_the_keyed_directory(tmp_path):
    from numba.core import config

    from edgeliquid.runtime import from_model

    target = _jitcache.cache_dir()
    assert config.CACHE_DIR == str(target)  # set by importing edgeliquid.runtime
    model_path = PKG / "data" / "cartpole_ncp.onnx"
    from edgeliquid.model.file import read

    policy = from_model(read(model_path), "cpu", np.float32)
    policy.step(np.zeros(policy.config.n_inputs, np.float32), 1.0)
    assert any(target.rglob("kernels.step-*.nbi")), f"no kernels.step index under {target}"


def test_stale_caches_of_other_versions_are_removed(tmp_path):
    stale = PKG / "__pycache__" / "numba-0000000000000000"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "x.nbi").write_bytes(b"old")
    from numba.core import config

    saved = config.CACHE_DIR
    try:
        config.CACHE_DIR = ""  # as if first configured in this process
        assert _jitcache.configure() == _jitcache.cache_dir()
        assert not stale.exists()
    finally:
        config.CACHE_DIR = saved
        shutil.rmtree(stale, ignore_errors=True)
