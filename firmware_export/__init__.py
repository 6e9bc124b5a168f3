"""firmware_export: an edgeliquid model as portable C99 for microcontrollers.

``export_firmware(model_path, out_dir, name)`` writes ``NAME.h``/``NAME.c`` (float32,
or fixed point with ``fixed_point=True``), the protocol v1 device codec
``edgeliquid_proto.h/.c`` and ``manifest.json``. LTC models are integrated with the solver
their file names (fused, explicit_euler, rk4; fixed point: see :mod:`firmware_export.fixed_c`);
CfC models get float32 C from :mod:`firmware_export.cfc_c`, fixed point from
:mod:`firmware_export.cfc_fixed_c` (modes default/no_gate; pure and mixed memory refused);
``NAME_normalize`` when the model records its input normalisation. Names and output paths
are checked before anything is written, and no file is written through a link. See
docs/firmware.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

from .cgen import CodegenError, check_name
from .channels import channels_of
from .float_c import generate_float
from .layout import FirmwareModel
from .outdir import prepare, write_all

__all__ = ["export_firmware", "export_ltc", "CodegenError"]

# A model file bigger than this is not a policy for a microcontroller (and reading it whole
# to hash it would cost that much memory).
MAX_MODEL_BYTES = 256 << 20


def export_firmware(
    model_path: str | Path,
    out_dir: str | Path,
    name: str,
    *,
    fixed_point: bool = False,
    fast_sigmoid: bool = False,
    min_elapsed: float = 0.01,
    max_elapsed: float | None = None,
    unroll: bool | str = False,
) -> dict:
    """Generate the C files for ``model_path`` in ``out_dir``; returns the manifest.

    ``min_elapsed``/``max_elapsed`` (fixed point): the elapsed range the Q format covers, in
    model time units; the C clamps to it. ``max_elapsed`` None is 100; fixed-point
    explicit_euler needs ``max_elapsed <= ode_unfolds * tau_min`` (docs/firmware.md).
    ``unroll`` (LTC): straight-line code per synapse instead of the CSR loops, the same bits,
    fewer instructions per step for more flash: "substeps" the recurrent passes, "all" (or True)
    the sensory pass too (docs/firmware.md, "Unrolled synapses").

    Raises :class:`CodegenError` (an ``EdgeliquidError``) for a bad ``name``, output path or
    metadata, and ``ModelFormatError`` for a missing or invalid model file; nothing is
    written unless every check passed, and nothing is ever written through a link.
    """
    from edgeliquid.model.file import read_bytes

    check_name(name)
    check_elapsed(min_elapsed, max_elapsed)
    model_path = Path(model_path)
    data = _read_model(model_path)
    sha = hashlib.sha256(data).hexdigest()
    model = read_bytes(data, str(model_path))
    if getattr(model.config, "cell", "ltc") == "cfc":
        if unroll_level(unroll) != "none":
            raise CodegenError(f"{model_path}: --unroll applies to LTC models only (this is a CfC model)")
        return _export_cfc(
            model, model_path, sha, out_dir, name, fixed_point, fast_sigmoid, min_elapsed, max_elapsed
        )
    return export_ltc(
        model,
        out_dir,
        name,
        model_path=str(model_path),
        sha=sha,
        fixed_point=fixed_point,
        fast_sigmoid=fast_sigmoid,
        min_elapsed=min_elapsed,
        max_elapsed=max_elapsed,
        unroll=unroll,
    )


def export_ltc(
    model,
    out_dir: str | Path,
    name: str,
    *,
    model_path: str,
    sha: str,
    fixed_point: bool = False,
    fast_sigmoid: bool = False,
    min_elapsed: float = 0.01,
    max_elapsed: float | None = None,
    unroll: bool | str = False,
) -> dict:
    """The LTC path of :func:`export_firmware` from an in-memory ``LTCModel`` (``sha``: of its file).

    Dispatches on ``model.config.solver`` (fused, explicit_euler, rk4; fixed point: fused and
    explicit_euler only, see ``fixed_c``); ``max_elapsed`` None is 100 model units.
    """
    from .proto_c import codec_files

    check_name(name)
    check_elapsed(min_elapsed, max_elapsed)
    unroll = unroll_level(unroll)
    fm = FirmwareModel.of(model)
    ch = channels_of(model)
    manifest = {
        "model": str(model_path),
        "model_sha256": sha,
        "name": name,
        "variant": "fixed" if fixed_point else ("float32-fast-sigmoid" if fast_sigmoid else "float32"),
        "n_inputs": model.config.n_inputs,
        "n_outputs": model.config.n_outputs,
        "state_size": model.config.n_state,
        "units": model.config.units,
        "solver": model.config.solver,
        "ode_unfolds": model.config.ode_unfolds,
        "synapses": fm.rec.count,
        "sensory_synapses": fm.sens.count,
        "unroll": unroll,
        **ch.manifest(name),
    }
    if fixed_point:
        from .fixed_c import generate_fixed

        header, source, qinfo = generate_fixed(
            fm,
            name,
            sha,
            min_elapsed=min_elapsed,
            max_elapsed=max_elapsed or 100.0,
            channels=ch,
            unroll=unroll,
        )
        manifest["fixed_point"] = qinfo
    else:
        header, source = generate_float(fm, name, sha, fast_sigmoid, channels=ch, unroll=unroll)
    manifest.update(estimate_memory(fm, fixed_point))
    files = {f"{name}.h": header, f"{name}.c": source, **codec_files(sha)}
    files["manifest.json"] = json.dumps(manifest, indent=2)
    write_all(prepare(out_dir, list(files)), files)
    return manifest


def unroll_level(unroll: bool | str | None) -> str:
    """``unroll`` as "none", "substeps" or "all" (True is "all"); raises CodegenError otherwise."""
    if unroll is None or unroll is False or unroll == "none":
        return "none"
    if unroll is True or unroll == "all":
        return "all"
    if unroll == "substeps":
        return "substeps"
    raise CodegenError(f"--unroll {unroll!r}: expected all or substeps")


def check_elapsed(min_elapsed: float, max_elapsed: float | None) -> None:
    """--min-elapsed in (0, 100]; --max-elapsed (when given) in [min_elapsed, 100]."""
    if not (isinstance(min_elapsed, int | float) and math.isfinite(min_elapsed) and 0 < min_elapsed <= 100):
        raise CodegenError(f"--min-elapsed {min_elapsed!r} must be a number in (0, 100] (model time units)")
    ok = isinstance(max_elapsed, int | float) and math.isfinite(max_elapsed)
    if max_elapsed is not None and not (ok and min_elapsed <= max_elapsed <= 100):
        raise CodegenError(
            f"--max-elapsed {max_elapsed!r} must be a number in [--min-elapsed {min_elapsed!r}, 100] "
            "(model time units)"
        )


def _export_cfc(
    model,
    model_path: Path,
    sha: str,
    out_dir,
    name: str,
    fixed_point: bool,
    fast_sigmoid: bool,
    min_elapsed: float = 0.01,
    max_elapsed: float | None = None,
):
    """The CfC path of :func:`export_firmware`: float32 (``cfc_c``) or fixed point (``cfc_fixed_c``:
    default/no_gate; pure and mixed memory refused in one line)."""
    from .cfc_c import estimate_cfc_memory, generate_cfc_float
    from .proto_c import codec_files

    cfg = model.config
    ch = channels_of(model)
    manifest = {
        "model": str(model_path),
        "model_sha256": sha,
        "name": name,
        "cell": "cfc",
        "variant": "fixed" if fixed_point else ("float32-fast-sigmoid" if fast_sigmoid else "float32"),
        "n_inputs": cfg.n_inputs,
        "n_outputs": cfg.n_outputs,
        "state_size": cfg.n_state,
        "units": cfg.units,
        "mode": cfg.mode,
        "activation": cfg.activation if cfg.backbone_layers and not cfg.wired else None,
        "backbone_units": cfg.backbone_units if cfg.backbone_layers and not cfg.wired else 0,
        "backbone_layers": 0 if cfg.wired else cfg.backbone_layers,
        "layer_sizes": list(cfg.layer_sizes),
        "mixed_memory": cfg.mixed_memory,
        "proj_size": cfg.proj_size,
        **ch.manifest(name),
    }
    if fixed_point:
        from .cfc_fixed_c import estimate_cfc_fixed_memory, generate_cfc_fixed

        header, source, qinfo = generate_cfc_fixed(
            model, name, sha, min_elapsed=min_elapsed, max_elapsed=max_elapsed or 100.0, channels=ch
        )
        manifest["fixed_point"] = qinfo
        manifest.update(estimate_cfc_fixed_memory(model, qinfo))
    else:
        header, source = generate_cfc_float(model, name, sha, fast_sigmoid, channels=ch)
        manifest.update(estimate_cfc_memory(model))
    files = {f"{name}.h": header, f"{name}.c": source, **codec_files(sha)}
    files["manifest.json"] = json.dumps(manifest, indent=2)
    write_all(prepare(out_dir, list(files)), files)
    return manifest


def _read_model(path: Path) -> bytes:
    from edgeliquid.errors import ModelFormatError

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise ModelFormatError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read model file ({exc.strerror})") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFormatError(f"{path}: larger than {MAX_MODEL_BYTES >> 20} MiB, not a firmware policy")
    return data


def estimate_memory(fm: FirmwareModel, fixed_point: bool) -> dict:
    """Rough flash/RAM from the arrays (exact numbers: arm-none-eabi-size, see BENCHMARKS.md)."""
    cfg = fm.cfg
    word = 4
    idx = 1 if fm.index_type() == "uint8_t" else 2
    syn = fm.rec.count + fm.sens.count
    if fixed_point:  # per synapse src, dst, w, sigma, mu, E
        flash = syn * (4 * word + 2 * idx)
    else:  # per synapse {a, b, w, E} + its source index; per neuron two synapse counts (CSR)
        flash = syn * (4 * word + idx) + 2 * cfg.units * idx
    flash += cfg.units * 3 * word + 2 * (cfg.n_inputs + cfg.motor_size) * word
    if cfg.mixed_memory:
        flash += 4 * cfg.units * (cfg.n_inputs + cfg.units + 1) * word
    # float buffers of U in the step (and the derivative function), per solver
    per_u = {"fused_semi_implicit_euler": 7 if fixed_point else 5, "explicit_euler": 6, "rk4": 10}[cfg.solver]
    stack = (per_u * cfg.units + cfg.n_inputs) * word + (5 * cfg.units * word if cfg.mixed_memory else 0)
    return {
        "flash_params_bytes_estimate": flash,
        "ram_static_bytes": 0,
        "state_bytes_caller_owned": cfg.n_state * word,
        "stack_bytes_estimate": stack,
    }
