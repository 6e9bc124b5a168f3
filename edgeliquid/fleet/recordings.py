"""Which recordings a fleet job reads: files, folders (recursively, ``*.mcap``) and globs.

Workers open these paths themselves, so on a cluster they must name the same files on every
node (a shared file system); see docs/fleet.md.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..errors import RecordingError


def expand(specs: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Recording paths (sorted, no duplicates) and ``{"recording", "error"}`` for specs that
    match nothing (reported and skipped, like an unreadable recording)."""
    found: list[str] = []
    missing: list[dict[str, str]] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            hits = sorted(str(q) for q in p.rglob("*.mcap") if q.is_file())
            why = "folder holds no .mcap recordings"
        elif any(c in spec for c in "*?["):
            hits = sorted(q for q in glob.glob(spec, recursive=True) if os.path.isfile(q))
            why = "pattern matches no file"
        else:
            hits, why = [spec], ""
        if not hits:
            missing.append({"recording": spec, "error": f"{spec}: {why}"})
        found.extend(hits)
    seen: set[str] = set()
    out = [f for f in found if not (f in seen or seen.add(f))]
    if not out and not missing:
        raise RecordingError("no recordings given")
    return out, missing


def group_by_size(paths: list[str], max_bytes: int = 64 << 20, max_files: int = 64) -> list[list[str]]:
    """Consecutive paths packed into tasks of at most ``max_bytes`` (and ``max_files``) each;
    a bigger file is a task of its own. Deterministic: depends only on the paths and sizes."""
    tasks: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for p in paths:
        try:
            b = os.path.getsize(p)
        except OSError:
            b = 0  # the task reports it as unreadable
        if cur and (size + b > max_bytes or len(cur) >= max_files):
            tasks.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += b
    if cur:
        tasks.append(cur)
    return tasks
