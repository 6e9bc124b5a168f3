"""``edgeliquid convert``: the same trained weights with another ODE solver or number of unfolds.

Only the integration changes (``edgeliquid.solver``, ``edgeliquid.ode_unfolds``); the
parameters, roles and every other metadata key are kept. The provenance keys say what the
file was converted from, so that the integration the model was trained with is never lost,
however many times a file is converted:

* ``converted_from_sha256``: sha256 of the model file this one was converted from;
* ``trained_solver``, ``trained_ode_unfolds``: the integration of the trained model
  (copied from the source's own provenance when the source was itself converted).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import EdgeliquidError, ModelFormatError
from .cell import SOLVER_NAMES, LTCModel
from .cfc import CfCModel
from .checks import MAX_UNFOLDS, metadata_count, short

#: Provenance keys (without the ``edgeliquid.`` prefix) written by :func:`convert`.
CONVERTED_FROM_KEY = "converted_from_sha256"
TRAINED_SOLVER_KEY = "trained_solver"
TRAINED_UNFOLDS_KEY = "trained_ode_unfolds"


def trained_integration(model: LTCModel) -> tuple[str, int]:
    """(solver, unfolds) the model was trained with: its provenance keys when it was
    converted, else its own config.

    Raises:
        ModelFormatError: a provenance key is malformed or only one of the pair is present.
    """
    info, src = model.info, model.source
    has = (TRAINED_SOLVER_KEY in info, TRAINED_UNFOLDS_KEY in info)
    if not any(has):
        return model.config.solver, model.config.ode_unfolds
    if not all(has):
        missing = TRAINED_UNFOLDS_KEY if has[0] else TRAINED_SOLVER_KEY
        raise ModelFormatError(f"{src}: metadata edgeliquid.{missing} is missing (the other half is there)")
    solver = info[TRAINED_SOLVER_KEY]
    if solver not in SOLVER_NAMES:
        raise ModelFormatError(
            f"{src}: metadata edgeliquid.{TRAINED_SOLVER_KEY}={short(solver)} unknown; "
            f"expected one of {SOLVER_NAMES}"
        )
    unfolds = metadata_count(info, TRAINED_UNFOLDS_KEY, src)
    if not 1 <= unfolds <= MAX_UNFOLDS:
        raise ModelFormatError(
            f"{src}: metadata edgeliquid.{TRAINED_UNFOLDS_KEY}={unfolds} is outside 1..{MAX_UNFOLDS}"
        )
    return solver, unfolds


def check_integration(solver: str, unfolds: int, what: str = "convert") -> None:
    """Raise :class:`EdgeliquidError` unless ``solver`` is known and ``unfolds`` in 1..MAX_UNFOLDS."""
    if solver not in SOLVER_NAMES:
        raise EdgeliquidError(f"{what}: --solver {solver!r} unknown; expected one of {SOLVER_NAMES}")
    if isinstance(unfolds, bool) or not isinstance(unfolds, int) or not 1 <= unfolds <= MAX_UNFOLDS:
        raise EdgeliquidError(
            f"{what}: --unfolds must be an integer in 1..{MAX_UNFOLDS} (docs/model-format.md, Limits), "
            f"got {unfolds!r}"
        )


def convert(model: LTCModel, solver: str, unfolds: int, source_sha256: str | None = None) -> LTCModel:
    """A new model with ``model``'s weights integrated by ``solver`` with ``unfolds`` sub-steps.

    Args:
        model: an LTC model (a CfC model has no ODE solver and is refused).
        solver: one of :data:`~edgeliquid.model.cell.SOLVER_NAMES`.
        unfolds: sub-steps per step, 1 .. the ``ode_unfolds`` limit.
        source_sha256: sha256 of the file ``model`` was read from, recorded as
            ``converted_from_sha256`` (None: not recorded, and a stale one is dropped).

    Raises:
        EdgeliquidError: a CfC model, an unknown solver or unfolds out of range.
        ModelFormatError: the source's provenance keys are malformed.
    """
    if isinstance(model, CfCModel) or not isinstance(model, LTCModel):
        raise EdgeliquidError(
            f"{model.source}: a CfC model has no ODE solver to convert (its step is closed-form)"
        )
    check_integration(solver, unfolds)
    trained_solver, trained_unfolds = trained_integration(model)
    info = dict(model.info)
    info[TRAINED_SOLVER_KEY] = trained_solver
    info[TRAINED_UNFOLDS_KEY] = str(trained_unfolds)
    info.pop(CONVERTED_FROM_KEY, None)
    if source_sha256 is not None:
        info[CONVERTED_FROM_KEY] = source_sha256
    config = dataclasses.replace(model.config, solver=solver, ode_unfolds=int(unfolds))
    params = {k: v.copy() for k, v in model.params.items()}
    return LTCModel(config, params, roles=list(model.roles), info=info, source=model.source)


def check_convert_output(output: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse, before any work, an output that cannot be written or is the input model itself."""
    from .export import check_output_path

    out = Path(output)
    if out.exists() and Path(path).exists() and os.path.samefile(out, path):
        raise EdgeliquidError(f"{output}: is the input model itself; write the converted file elsewhere")
    check_output_path(output)


def convert_file(
    path: str | os.PathLike, output: str | os.PathLike, solver: str | None, unfolds: int | None
) -> tuple[LTCModel, LTCModel]:
    """Read ``path``, convert it (None keeps the file's solver / unfolds) and write ``output``.

    Returns (source model, converted model). Raises :class:`EdgeliquidError` (one line) for a
    bad output path, a CfC model or bad arguments, :class:`ModelFormatError` for a bad file.
    """
    from .export import sha256_of
    from .file import read, save

    check_convert_output(output, path)
    source = read(path)
    if isinstance(source, CfCModel):
        convert(source, "", 0)  # raises the CfC refusal
    sha = sha256_of(path)
    out = convert(
        source,
        solver if solver is not None else source.config.solver,
        unfolds if unfolds is not None else source.config.ode_unfolds,
        source_sha256=sha,
    )
    out.source = str(output)
    try:
        save(out, output)
    except OSError as exc:  # permissions, full disk: the folder was checked before
        raise EdgeliquidError(f"{output}: cannot write the model file ({exc.strerror or exc})") from None
    return source, out
