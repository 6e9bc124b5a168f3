"""firmware_export: an edgeliquid model as portable C99 for microcontrollers.

``export_firmware(model_path, out_dir, name)`` writes ``NAME.h``/``NAME.c`` (float32,
or fixed point with ``fixed_point=True``), the protocol v1 device codec
``edgeliquid_proto.h/.c`` and ``manifest.json``. See docs/firmware.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .cgen import CodegenError, check_name
from .float_c import generate_float
from .layout import FirmwareModel

__all__ = ["export_firmware", "CodegenError"]


def export_firmware(
    model_path: str | Path,
    out_dir: str | Path,
    name: str,
    *,
    fixed_point: bool = False,
    fast_sigmoid: bool = False,
    min_elapsed: float = 0.01,
) -> dict:
    """Generate the C files for ``model_path`` in ``out_dir``; returns the manifest."""
    from edgeliquid.modelfile import read

    check_name(name)
    model_path = Path(model_path)
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    model = read(model_path)
    fm = FirmwareModel.of(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": str(model_path),
        "model_sha256": sha,
        "name": name,
        "variant": "fixed" if fixed_point else ("float32-fast-sigmoid" if fast_sigmoid else "float32"),
        "n_inputs": model.config.n_inputs,
        "n_outputs": model.config.n_outputs,
        "state_size": model.config.n_state,
        "units": model.config.units,
        "synapses": fm.rec.count,
        "sensory_synapses": fm.sens.count,
    }
    if fixed_point:
        from .fixed_c import generate_fixed

        header, source, qinfo = generate_fixed(fm, name, sha, min_elapsed=min_elapsed)
        manifest["fixed_point"] = qinfo
    else:
        header, source = generate_float(fm, name, sha, fast_sigmoid)
    (out / f"{name}.h").write_text(header)
    (out / f"{name}.c").write_text(source)
    from .proto_c import write_codec

    write_codec(out, sha)
    manifest.update(estimate_memory(fm, fixed_point))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def estimate_memory(fm: FirmwareModel, fixed_point: bool) -> dict:
    """Rough flash/RAM from the arrays (exact numbers: arm-none-eabi-size, see BENCHMARKS.md)."""
    cfg = fm.cfg
    word = 4
    idx = 1 if fm.index_type() == "uint8_t" else 2
    syn = fm.rec.count + fm.sens.count
    flash = syn * (4 * word + 2 * idx) + cfg.units * 3 * word + 2 * (cfg.n_inputs + cfg.motor_size) * word
    if cfg.mixed_memory:
        flash += 4 * cfg.units * (cfg.n_inputs + cfg.units + 1) * word
    stack = (7 * cfg.units + cfg.n_inputs) * word + (5 * cfg.units * word if cfg.mixed_memory else 0)
    return {
        "flash_params_bytes_estimate": flash,
        "ram_static_bytes": 0,
        "state_bytes_caller_owned": cfg.n_state * word,
        "stack_bytes_estimate": stack,
    }
