"""``edgeliquid firmware MODEL -o OUT --name NAME --app BOARD``: a complete bare-metal controller.

Writes, next to the generated policy and the protocol codec: the board support (``board.h``,
``board.c``: vector table, startup, UART driver, timer), the linker script, ``app_config.h``
(the node config's channel maps and fail-safe settings), ``app.c`` (the controller main loop,
see :mod:`.controller_c`) and a ``Makefile``; then builds ``NAME.elf`` and ``NAME.bin`` with
arm-none-eabi-gcc (the same command the Makefile runs), records the whole image's flash and RAM
in ``manifest.json`` and, where qemu-system-arm is installed, the instructions per control cycle
measured on the emulated core (:mod:`.qemu`). Boards: :data:`BOARDS`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..cgen import CodegenError, banner
from ..outdir import prepare, write_all
from . import board_mps2
from .controller_c import app_source, config_header

BOARDS = {"mps2-an386": board_mps2}
# -O2: the policy step is ~15 % fewer instructions than at -Os for ~0.9 KB more flash (BENCHMARKS.md)
CFLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections"]
LINKER_NAME = "board.ld"
SOURCES = ("board.c", "app.c", "{name}.c", "edgeliquid_proto.c")

MAKEFILE = """# {banner_line}
# Rebuilds {name}.elf and {name}.bin for {board} with arm-none-eabi-gcc: make
CC = arm-none-eabi-gcc
OBJCOPY = arm-none-eabi-objcopy
CFLAGS = {cflags}
LDFLAGS = {ldflags}
SRCS = {srcs}

all: {name}.elf {name}.bin

{name}.elf: $(SRCS) $(wildcard *.h) {ld}
\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCS) {libs}

{name}.bin: {name}.elf
\t$(OBJCOPY) -O binary $< $@

clean:
\trm -f {name}.elf {name}.bin

.PHONY: all clean
"""


def default_config_path() -> Path:
    """The demo's node config (configs/cartpole_demo.yaml, or the copy inside the package)."""
    pkg = Path(__file__).resolve().parents[2] / "edgeliquid"
    for cand in (pkg.parent / "configs" / "cartpole_demo.yaml", pkg / "data" / "cartpole_demo.yaml"):
        if cand.exists():
            return cand
    raise CodegenError("cartpole_demo.yaml not found; pass --config")


def _load_config(config):
    from edgeliquid.node.config import load_config

    path = Path(config) if config is not None else default_config_path()
    cfg = load_config(path)
    if cfg.protocol != "cobs":
        raise CodegenError(f"{path}: serial.protocol: the app speaks the binary protocol v1 (cobs), not text")
    if cfg.mode != "event":
        raise CodegenError(f"{path}: loop.mode: the app steps on each SENSOR frame (event), not a fixed tick")
    return cfg


def compile_command(board: str, name: str) -> list[str]:
    """The arm-none-eabi-gcc command (run in the output folder) that links ``NAME.elf``."""
    b = BOARDS[board]
    return [
        "arm-none-eabi-gcc",
        *b.CPU_FLAGS,
        *CFLAGS,
        *_ldflags(),
        "-o",
        f"{name}.elf",
        *[s.format(name=name) for s in SOURCES],
        "-lm",
    ]


def _ldflags() -> list[str]:
    return ["-nostartfiles", "--specs=nano.specs", "-T", LINKER_NAME, "-Wl,--gc-sections"]


def build_app(
    model_path: str | Path,
    out_dir: str | Path,
    name: str,
    board: str = "mps2-an386",
    config: str | Path | None = None,
    *,
    fast_sigmoid: bool = True,
    measure: bool = True,
    unroll: bool | str = "none",
) -> dict:
    """Generate, build and (where qemu is installed) measure the controller app; returns the manifest.

    ``config``: the node config whose channel maps and fail-safe rules are compiled in (default:
    the demo's). ``fast_sigmoid``: the policy's exp is numba's ≤ 2 ulp polynomial (no libm;
    the default for the app). ``unroll``: as export_firmware's (the shipped policy fits the 16 KB
    budget with "substeps", not with "all"; docs/firmware.md). Raises :class:`CodegenError` for an
    unknown board, a config that does not fit the model, or a failed build (the sources stay in
    ``out_dir``).
    """
    from .. import export_firmware
    from ..cgen import check_name

    if board not in BOARDS:
        raise CodegenError(f"--app {board!r}: unknown board; supported: {', '.join(sorted(BOARDS))}")
    check_name(name)
    if name in ("app", "board"):
        raise CodegenError(f"--name {name!r} collides with the app's own files ({name}.c); choose another")
    cfg = _load_config(config)
    b = BOARDS[board]
    manifest = export_firmware(model_path, out_dir, name, fast_sigmoid=fast_sigmoid, unroll=unroll)
    if (manifest["n_inputs"], manifest["n_outputs"]) != (len(cfg.inputs), len(cfg.outputs)):
        raise CodegenError(
            f"{cfg.source}: config has {len(cfg.inputs)} inputs / {len(cfg.outputs)} outputs but model "
            f"{model_path} has {manifest['n_inputs']} / {manifest['n_outputs']}"
        )
    out = Path(out_dir)
    ban = banner(manifest["model_sha256"], f"edgeliquid controller app for {board}")
    files = {
        "board.h": ban + b.BOARD_H,
        "board.c": ban + b.BOARD_C,
        LINKER_NAME: b.LINKER,
        "app_config.h": config_header(cfg, name, manifest["state_size"], ban),
        "app.c": app_source(ban),
        "Makefile": _makefile(board, name, manifest["model_sha256"]),
    }
    write_all(prepare(out, [*files, f"{name}.elf", f"{name}.bin"]), files)
    cc = compile_command(board, name)
    if shutil.which(cc[0]) is None:
        raise CodegenError(
            f"-o {out}: sources and Makefile written, but arm-none-eabi-gcc is not installed to build "
            f"{name}.elf (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)"
        )
    r = subprocess.run(cc, cwd=out, capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or ["?"]
        first = next((ln for ln in lines if "error" in ln), lines[0])[:200]
        raise CodegenError(f"-o {out}: building {name}.elf failed: {first}")
    subprocess.run(
        ["arm-none-eabi-objcopy", "-O", "binary", f"{name}.elf", f"{name}.bin"], cwd=out, check=True
    )
    app = {
        "board": board,
        "config": str(cfg.source),
        "elf": f"{name}.elf",
        "bin": f"{name}.bin",
        "build": " ".join(cc),
        **image_size(out / f"{name}.elf"),
        "rate_hz": cfg.rate_hz,
    }
    if measure:
        from .qemu import measure_instructions, qemu_available

        if qemu_available():
            app["instructions"] = measure_instructions(out / f"{name}.elf", cfg)
        else:
            app["instructions"] = {"note": "not measured: qemu-system-arm is not installed"}
    manifest["app"] = app
    write_all(prepare(out, ["manifest.json"]), {"manifest.json": json.dumps(manifest, indent=2)})
    return manifest


def _makefile(board: str, name: str, sha: str) -> str:
    b = BOARDS[board]
    return MAKEFILE.format(
        banner_line=f"generated by edgeliquid from model sha256 {sha}; do not edit",
        name=name,
        board=board,
        cflags=" ".join([*b.CPU_FLAGS, *CFLAGS]),
        ldflags=" ".join(_ldflags()),
        srcs=" ".join(s.format(name=name) for s in SOURCES),
        ld=LINKER_NAME,
        libs="-lm",
    )


def image_size(elf: Path) -> dict:
    """Flash (text, rodata, vectors, exidx, initialised data) and RAM (data, bss, stack) of the image."""
    r = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True)
    sec = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit() and parts[0].startswith("."):
            sec[parts[0]] = int(parts[1])
    data = sec.get(".data", 0)
    flash = sec.get(".text", 0) + sec.get(".ARM.exidx", 0) + data
    ram = data + sec.get(".bss", 0) + sec.get(".stack", 0)
    return {
        "flash_bytes": flash,
        "ram_bytes": ram,
        "stack_bytes": sec.get(".stack", 0),
        "sections": {k: v for k, v in sec.items() if k in (".text", ".ARM.exidx", ".data", ".bss", ".stack")},
    }
