"""Where numba caches edgeliquid's compiled kernels: one directory per version of their sources.

numba keys a cached function on the timestamp of its *own* file, but edgeliquid's kernels
inline functions from other modules (the node's frame kernels inline both cells' control
steps, every kernel inlines ``fastexp``, offsets come from the packing modules). Editing one of
those files (a ``git pull`` into an editable install on a robot) left the other modules' caches
holding the old inlined code with the new array layouts: a segfault was seen. Keying one cache
directory on a hash of every kernel source makes any change start from a fresh cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent  # the edgeliquid package
#: Everything a numba kernel of edgeliquid is compiled from (folders: every ``*.py`` in them).
KERNEL_SOURCES = ("runtime", "node/framecodec.py", "node/syscalls.py", "fleet")
_PREFIX = "numba-"


def source_key(root: Path = _PKG) -> str:
    """A short hash of every kernel source file (names and contents) under ``root``."""
    h = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        p = root / rel
        for f in sorted(p.glob("*.py")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_dir(root: Path = _PKG, environ: dict | None = None) -> Path:
    """``$NUMBA_CACHE_DIR/edgeliquid-KEY`` if the user set one, else ``edgeliquid/__pycache__/numba-KEY``."""
    environ = os.environ if environ is None else environ
    user = environ.get("NUMBA_CACHE_DIR")
    key = source_key(root)
    if user:
        return Path(user) / f"edgeliquid-{key}"
    return root / "__pycache__" / f"{_PREFIX}{key}"


def configure() -> Path:
    """Point numba's cache at :func:`cache_dir`; call before any ``@njit(cache=True)`` of
    edgeliquid is decorated (``edgeliquid.runtime`` and ``edgeliquid.fleet`` do, on import).

    Caches of other source versions in the package's ``__pycache__`` are removed (they can
    never be used again). If the directory is not writable numba falls back to its own
    locations, as without this.
    """
    from numba.core import config

    target = cache_dir()
    if config.CACHE_DIR != str(target):
        config.CACHE_DIR = str(target)
        if target.parent == _PKG / "__pycache__" and target.parent.is_dir():
            for old in target.parent.glob(f"{_PREFIX}*"):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
    return target
