"""Writing the generated files: only inside the output folder, never through a link.

Every target is checked before anything is written (a refused export leaves the folder as
it was), then each file is written to a fresh temporary file in the folder (O_EXCL, so
never an existing file or link) and renamed over its name. A rename replaces a directory
entry; it never follows a symbolic link nor writes into a hard-linked file, so even a link
created between the check and the write cannot redirect the output.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .cgen import CodegenError


def prepare(out_dir: str | Path, names: list[str]) -> Path:
    """Create ``out_dir`` if needed and check each target name in it; raises :class:`CodegenError`.

    A target that exists must be a regular file (it will be replaced); a symbolic link,
    a directory or a device/FIFO is refused.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CodegenError(f"-o {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CodegenError(f"-o {out}: cannot create the output directory ({exc.strerror})") from None
    for name in names:
        target = out / name
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CodegenError(f"{target}: cannot check the output file ({exc.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise CodegenError(
                f"{target} is a symbolic link; refusing to write through it (remove it or choose another -o)"
            )
        if not stat.S_ISREG(st.st_mode):
            raise CodegenError(f"{target} exists and is not a regular file; refusing to replace it")
    return out


def write_all(out: Path, files: dict[str, str]) -> None:
    """Write ``{file name: text}`` into ``out``: all temporary files first, then the renames."""
    mask = os.umask(0)
    os.umask(mask)
    staged: list[tuple[str, Path]] = []
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            staged.append((tmp, out / name))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                os.fchmod(f.fileno(), 0o666 & ~mask)
                f.write(text)
        for tmp, target in staged:
            os.replace(tmp, target)
    except OSError as exc:
        raise CodegenError(f"-o {out}: cannot write the generated files ({exc.strerror})") from None
    finally:
        for tmp, _ in staged:
            if os.path.lexists(tmp):
                os.unlink(tmp)
