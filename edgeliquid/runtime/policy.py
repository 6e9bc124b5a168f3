"""Policies: a model plus its recurrent state, stepped by one backend.

``load(path)`` -> :class:`Policy`. Backends: ``cpu`` (numba kernels, the fast
path), ``reference`` (numpy, the spec) and ``cuda`` (numba-cuda, thread per
instance; :mod:`edgeliquid.runtime.cuda`). All share this API and the same input checks:
a bad input raises :class:`~edgeliquid.errors.InputError` and leaves the state
untouched.

``step`` returns the policy's own output buffer, overwritten by the next step,
so that the control loop allocates nothing; copy it to keep it.

Explicit solvers (``explicit_euler``, ``rk4``) are stable only up to an elapsed time per step
(Theorem 1, :func:`edgeliquid.model.guarantees.stability`): ``load`` refuses a model whose
bound is below the caller's ``nominal_elapsed``, and every policy counts the steps taken
beyond it in ``unstable_steps`` (one float compare per step).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np

from ..errors import BackendError, InputError, StabilityError
from ..model.cell import LTCModel
from ..model.cfc import CfCModel
from ..model.guarantees import max_elapsed, stability_problem
from . import cfc_kernels, kernels
from .cfc_packing import W_Y as CFC_W_Y
from .cfc_packing import CfCPacked
from .cfc_reference import CfCReferenceCell
from .packing import W_Y, Packed
from .reference import ReferenceCell

BACKENDS: tuple[str, ...] = ()  # filled by register_backend
_FACTORIES: dict[str, Any] = {}


def _kernel_array(a: Any, dtype: Any) -> np.ndarray:
    """``a`` as a C-contiguous, writable array of ``dtype``. numba types a read-only array
    (``np.broadcast_to``, ``np.frombuffer``) apart from a writable one: passing one would compile
    a second signature of the kernel in the middle of a run (22 s for a CfC batch kernel)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def compiled_entry(dispatcher, args: tuple):
    """Call the numba ``dispatcher(*args)`` once (compiling or loading it) and return the compiled
    entry point for exactly these argument types, or the dispatcher if numba keeps none.

    Calling the entry point skips numba's type dispatch (a ``typeof`` per argument, ~0.1 µs
    each). It converts its arguments as the signature says without checking them, so the
    caller must pass the same types (array dtype, dimensions, C-contiguous, aligned) every call.
    """
    import numba

    dispatcher(*args)
    cres = dispatcher.overloads.get(tuple(numba.typeof(a) for a in args))
    return dispatcher if cres is None else cres.entry_point


def register_backend(name: str, factory) -> None:
    """Make ``load(..., backend=name)`` call ``factory(model, dtype, batch, mapped)``.

    Backends register themselves (the cuda module does on import), so this module never
    imports a backend by name.
    """
    global BACKENDS
    _FACTORIES[name] = factory
    BACKENDS = tuple(_FACTORIES)


class Policy:
    """A stateful LTC or CfC policy (see module docstring). Create with :func:`load`.

    Attributes:
        cell: ``"ltc"`` or ``"cfc"``, the model's cell type.
        n_inputs, n_outputs, n_state: sizes of x, y and the state.
        metadata: the model file's ``edgeliquid.*`` keys.
        batch: number of instances stepped together, or None for a single one.
        dtype: float32 or float64.
        max_elapsed: the largest stable elapsed time per step of the model's solver (Theorem 1;
            inf for the fused solver and for CfC).
        unstable_steps: steps taken with an elapsed time (any batch row) above ``max_elapsed``.
    """

    backend = "?"

    def __init__(self, model: LTCModel | CfCModel, dtype=np.float32, batch: int | None = None):
        cfg = model.config
        self.model = model
        self.config = cfg
        self.cell: str = getattr(cfg, "cell", "ltc")
        self.n_inputs, self.n_outputs, self.n_state = cfg.n_inputs, cfg.n_outputs, cfg.n_state
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise BackendError(f"dtype must be float32 or float64, got {self.dtype}")
        if batch is not None and (int(batch) != batch or batch < 1):
            raise InputError(f"batch must be a positive int or None, got {batch!r}")
        self.batch = None if batch is None else int(batch)
        self.metadata: dict[str, str] = model_metadata(model)
        rows = 1 if self.batch is None else self.batch
        self._xshape = (self.n_inputs,) if self.batch is None else (rows, self.n_inputs)
        self._xbuf = np.zeros(self._xshape, self.dtype)
        self._x_ok: np.ndarray | None = None  # the last caller's array that passed step's checks
        # elapsed stays float64 on every path so step, run and batch round alike.
        self._ebuf = np.ones(rows, np.float64)
        self.max_elapsed: float = max_elapsed(model)
        self.unstable_steps = 0

    def _count_unstable(self, e: np.ndarray, one_step: bool = False) -> None:
        """Count the steps in ``e`` beyond ``max_elapsed``: ``e`` is [T] (single steps) or
        [T, batch] (batch steps; a step counts once whatever its rows), or with ``one_step``
        the [batch] rows of one step. Free for the fused solver (no bound: no array made)."""
        if self.max_elapsed < math.inf:
            over = (e > self.max_elapsed)[None] if one_step else e > self.max_elapsed
            if over.ndim == 2:
                over = over.any(axis=1)
            self.unstable_steps += int(np.count_nonzero(over))

    # -- validation shared by every backend (cheap checks; finiteness is the kernel's)
    def _coerce_x(self, x: Any) -> np.ndarray:
        arr = np.asarray(x)
        if arr.shape != self._xshape:
            raise InputError(f"x: expected shape {self._xshape}, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise InputError(f"x: expected real numbers, got dtype {arr.dtype}")
        np.copyto(self._xbuf, arr, casting="unsafe")
        return self._xbuf

    def _coerce_elapsed(self, elapsed: Any) -> np.ndarray:
        e = np.asarray(elapsed, dtype=np.float64)
        rows = self._ebuf.shape[0]
        if e.shape not in ((), (rows,)):
            raise InputError(f"elapsed: expected a scalar or shape ({rows},), got {e.shape}")
        if not np.all(np.isfinite(e) & (e > 0)):
            raise InputError(f"elapsed must be finite and > 0, got {elapsed!r}; state unchanged")
        self._ebuf[:] = e
        return self._ebuf

    def _beyond(self, elapsed: Any) -> str:
        """An error message's note when ``elapsed`` exceeds the solver's stable bound."""
        if not float(elapsed) > self.max_elapsed:
            return ""
        return f", beyond the {self.config.solver} stability bound elapsed <= {self.max_elapsed:.4g}"

    def _bad_input(self, x: np.ndarray, where: str = "") -> InputError:
        bad = np.argwhere(~np.isfinite(np.asarray(x, np.float64)))
        idx = tuple(int(i) for i in bad[0]) if len(bad) else ()
        return InputError(
            f"x{list(idx)}{where} is {np.asarray(x)[idx]!r}: inputs must be finite; state unchanged"
        )

    def _check_sequence(self, xs: Any, elapsed: Any) -> tuple[np.ndarray, np.ndarray]:
        xs = _kernel_array(xs, self.dtype)
        lead = xs.shape[:-1]
        want = ("T",) + self._xshape
        if xs.ndim != len(want) or xs.shape[1:] != self._xshape:
            raise InputError(f"X: expected shape {want}, got {xs.shape}")
        if elapsed is None:
            elapsed = 1.0
        e = np.asarray(elapsed, dtype=np.float64)
        try:
            e = _kernel_array(
                np.broadcast_to(
                    e.reshape(e.shape + (1,) * (len(lead) - e.ndim)) if e.ndim < len(lead) else e, lead
                ),
                np.float64,
            )
        except ValueError:
            raise InputError(
                f"elapsed: expected a scalar or shape {lead[:1]} or {lead}, got {np.shape(elapsed)}"
            ) from None
        if not np.all(np.isfinite(e) & (e > 0)):
            raise InputError("elapsed must be finite and > 0 at every step; state unchanged")
        if not np.all(np.isfinite(xs)):
            raise self._bad_input(xs)
        return xs, e

    @property
    def state(self) -> np.ndarray:
        """A copy of the state ([n_state], or [batch, n_state])."""
        raise NotImplementedError

    def _checked_state(self, value: Any) -> np.ndarray:
        shape = (self.n_state,) if self.batch is None else (self.batch, self.n_state)
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != shape:
            raise InputError(f"state: expected shape {shape}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError("state must be finite")
        return arr.astype(self.dtype)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} backend={self.backend} in={self.n_inputs} "
            f"out={self.n_outputs} state={self.n_state} batch={self.batch} "
            f"dtype={self.dtype.name}>"
        )


class CpuPolicy(Policy):
    """numba backend: packed parameters, preallocated work rows, no allocation per step."""

    backend = "cpu"
    _k = kernels  # the kernel module (run/run_batch take the same arguments for every cell)

    def __init__(self, model: LTCModel | CfCModel, dtype=np.float32, batch: int | None = None):
        super().__init__(model, dtype, batch)
        self._packed = packed = self._pack(model)
        self._fp, self._ip = packed.fp, packed.ip
        rows = 1 if self.batch is None else self.batch
        self._work2d = np.zeros((rows, packed.work_size), self.dtype)
        self._work = self._work2d[0]
        y0 = self._y_index()
        if self.batch is None:
            self._y = self._work[y0 : y0 + self.n_outputs]
            self._state_view = self._work[: self.n_state]
        else:
            self._y = self._work2d[:, y0 : y0 + self.n_outputs]
            self._state_view = self._work2d[:, : self.n_state]
        self._bad = np.zeros(rows, np.int64)
        import numba

        # per-thread scratch of the chunked batch kernel (instances across SIMD lanes)
        size = self._batch_scratch_size() if self.batch is not None else 1
        self._scratch = np.zeros((numba.config.NUMBA_NUM_THREADS, size), self.dtype)
        # bound once: the step path pays one attribute lookup, as for a module global
        self._kstep, self._kstep_batch = self._k.step, self._k.step_batch
        self._warm_up()
        if self.batch is None:
            # the compiled entry point for step()'s exact argument types (checked in step())
            x0 = np.zeros(self.n_inputs, self.dtype)
            self._kstep = compiled_entry(self._k.step, (x0, 1.0, self._fp, self._ip, self._work.copy()))

    # The cell-specific parts; everything else is shared by every cell's cpu policy.
    def _pack(self, model: LTCModel) -> Packed:
        return Packed(model, self.dtype)

    def _y_index(self) -> int:
        return int(self._ip[W_Y])

    def _batch_scratch_size(self) -> int:
        cfg = self.model.config
        return kernels.batch_scratch_size(cfg.units, cfg.n_inputs)

    def _warm_up(self) -> None:
        """Compile (or load from the on-disk cache) every kernel this policy calls."""
        k = self._k
        scratch = self._work2d.copy()
        x = np.zeros(self._xshape, self.dtype)
        k.step(x if self.batch is None else x[0], 1.0, self._fp, self._ip, scratch[0])
        # run() passes float64 elapsed (see _check_sequence): warm that signature
        xs, ys = np.zeros((1, self.n_inputs), self.dtype), np.zeros((1, self.n_outputs), self.dtype)
        k.run(xs, np.ones(1), self._fp, self._ip, scratch[0], ys)
        if self.batch is not None:
            k.step_batch(x, self._ebuf, self._fp, self._ip, scratch, self._bad, self._scratch)
            ys = np.zeros((1, self.batch, self.n_outputs), self.dtype)
            self._run_batch(x[None], np.ones((1, self.batch)), scratch, ys)

    def _run_batch(self, xs: np.ndarray, e: np.ndarray, work: np.ndarray, ys: np.ndarray) -> tuple[int, int]:
        return self._k.run_batch(xs, e, self._fp, self._ip, work, ys, self._bad)

    def step(self, x: Any, elapsed: float | np.ndarray = 1.0) -> np.ndarray:
        """Advance the state by ``elapsed`` model time units with inputs ``x``.

        Args:
            x: [n_inputs] (or [batch, n_inputs]) raw inputs, finite.
            elapsed: model time units since the last step (ncps: 1.0 per sample), > 0;
                in batch mode a scalar or one per row.

        Returns:
            y [n_outputs] (or [batch, n_outputs]): the policy's buffer, valid until the
            next step.
        """
        # Anything but an exact-type C-contiguous, aligned, writable array (``flags.carray``: the
        # three in one lookup) goes through one copy into a buffer: numba never sees a new
        # signature (a JIT compile in the control loop), and the compiled entry point (which
        # converts without checking) only ever gets its own types. A control loop passes the
        # same array every step: the one that last passed is remembered (~0.5 µs of checks).
        # An ndarray object keeps its buffer and size for life (resize refuses while we hold
        # it), so whatever is reassigned on it in place, the kernel reads inside that buffer.
        if x is not self._x_ok:
            if (
                type(x) is not np.ndarray
                or x.dtype is not self.dtype
                or x.shape != self._xshape
                or not x.flags.carray
            ):
                x = self._coerce_x(x)
            else:
                self._x_ok = x
        if self.batch is None:
            if type(elapsed) is not float:
                elapsed = float(elapsed)
            status = self._kstep(x, elapsed, self._fp, self._ip, self._work)
            if status:
                raise self._status_error(status, x, elapsed)
            if elapsed > self.max_elapsed:
                self.unstable_steps += 1
            return self._y
        e = self._coerce_elapsed(elapsed)
        status, row = self._kstep_batch(x, e, self._fp, self._ip, self._work2d, self._bad, self._scratch)
        if status:
            raise self._status_error(status, x[row], e[row], f" (batch row {row})")
        self._count_unstable(e, one_step=True)
        return self._y

    def _status_error(self, status: int, x, elapsed, where: str = "") -> InputError | BackendError:
        if status == kernels.STATUS_BAD_ELAPSED:
            return InputError(f"elapsed{where} must be finite and > 0, got {elapsed!r}; state unchanged")
        if status == kernels.STATUS_BAD_INPUT:
            return self._bad_input(x, where)
        if status == kernels.STATUS_BAD_SOLVER:  # a corrupted packed model; Packed never makes one
            return BackendError(f"the compiled model's solver code is unknown{where}; state unchanged")
        return InputError(
            f"the step{where} produced a non-finite state (elapsed={elapsed!r}{self._beyond(elapsed)}); "
            "state unchanged"
        )

    def run(self, xs: Any, elapsed: Any = None) -> np.ndarray:
        """Step through a sequence in one compiled loop; the state carries over.

        Args:
            xs: [T, n_inputs] (batch: [T, batch, n_inputs]).
            elapsed: None (1.0), a scalar, [T], or (batch) [T, batch].

        Returns:
            ys [T, n_outputs] (batch: [T, batch, n_outputs]), a new array.
        """
        xs, e = self._check_sequence(xs, elapsed)
        if self.batch is None:
            ys = np.empty((xs.shape[0], self.n_outputs), self.dtype)
            status, t = self._k.run(xs, e, self._fp, self._ip, self._work, ys)
        else:
            ys = np.empty((xs.shape[0], self.batch, self.n_outputs), self.dtype)
            status, t = self._run_batch(xs, e, self._work2d, ys)
        if status:  # t: the step (single) or the batch row (batch; it stopped at its last good step)
            where, es = (f"index {t}", e[t]) if self.batch is None else (f"batch row {t}", e[:, t])
            raise InputError(f"the sequence produced a non-finite state at {where}{self._beyond(np.max(es))}")
        self._count_unstable(e)
        return ys

    def reset(self) -> None:
        """Zero the state (ncps' initial state)."""
        self._state_view[...] = 0

    @property
    def state(self) -> np.ndarray:
        return self._state_view.copy()

    @state.setter
    def state(self, value: Any) -> None:
        self._state_view[...] = self._checked_state(value)


class CfCCpuPolicy(CpuPolicy):
    """numba backend for CfC (:mod:`edgeliquid.runtime.cfc_kernels`); same API as :class:`CpuPolicy`."""

    _k = cfc_kernels

    def _pack(self, model: CfCModel) -> CfCPacked:
        return CfCPacked(model, self.dtype)

    def _y_index(self) -> int:
        return int(self._ip[CFC_W_Y])

    def _batch_scratch_size(self) -> int:
        return cfc_kernels.batch_scratch_size(self._packed.work_size)

    def _run_batch(self, xs: np.ndarray, e: np.ndarray, work: np.ndarray, ys: np.ndarray) -> tuple[int, int]:
        # the chunked CfC run_batch keeps each chunk's state in the batch scratch between steps
        return self._k.run_batch(xs, e, self._fp, self._ip, work, ys, self._bad, self._scratch)


class ReferencePolicy(Policy):
    """numpy backend: the spec. Slow; allocates; reads like ncps."""

    backend = "reference"

    def __init__(self, model: LTCModel | CfCModel, dtype=np.float64, batch: int | None = None):
        super().__init__(model, dtype, batch)
        cell = CfCReferenceCell if self.cell == "cfc" else ReferenceCell
        self._cell = cell(model, self.dtype)
        rows = 1 if self.batch is None else self.batch
        self._state = np.zeros((rows, self.n_state), self.dtype)
        self._out = np.zeros((rows, self.n_outputs), self.dtype)
        self._y = self._out[0] if self.batch is None else self._out

    def step(self, x: Any, elapsed: float | np.ndarray = 1.0) -> np.ndarray:
        x = self._coerce_x(x)
        e = self._coerce_elapsed(elapsed)
        if not np.all(np.isfinite(x)):
            raise self._bad_input(x)
        y, s = self._cell.step(x.reshape(-1, self.n_inputs), self._state, e)
        if not np.all(np.isfinite(s)):
            raise InputError(
                f"the step produced a non-finite state (elapsed={elapsed!r}{self._beyond(np.max(e))}); "
                "state unchanged"
            )
        self._state[...] = s
        self._out[...] = y
        self._count_unstable(e, one_step=True)
        return self._y

    def run(self, xs: Any, elapsed: Any = None) -> np.ndarray:
        xs, e = self._check_sequence(xs, elapsed)
        rows = 1 if self.batch is None else self.batch
        state = self._state.copy()
        ys = np.empty((xs.shape[0], rows, self.n_outputs), self.dtype)
        for t in range(xs.shape[0]):
            y, state = self._cell.step(xs[t].reshape(rows, -1), state, np.broadcast_to(e[t], (rows,)))
            ys[t] = y
        if not np.all(np.isfinite(state)):
            raise InputError(f"the sequence produced a non-finite state{self._beyond(np.max(e))}")
        self._state[...] = state
        self._count_unstable(e)
        return ys[:, 0] if self.batch is None else ys

    def reset(self) -> None:
        self._state[...] = 0

    @property
    def state(self) -> np.ndarray:
        return (self._state[0] if self.batch is None else self._state).copy()

    @state.setter
    def state(self, value: Any) -> None:
        self._state[...] = self._checked_state(value).reshape(self._state.shape)


#: Backends that can step a CfC model.
CFC_BACKENDS = ("cpu", "reference", "cuda")


def model_metadata(model: LTCModel | CfCModel) -> dict[str, str]:
    from ..model.file import metadata_for

    return metadata_for(model)


def from_model(
    model: LTCModel | CfCModel,
    backend: str = "cpu",
    dtype=np.float32,
    batch: int | None = None,
    mapped: bool = False,
    nominal_elapsed: float | None = None,
    allow_unstable: bool = False,
) -> Policy:
    """Make a policy from an in-memory :class:`LTCModel` or :class:`CfCModel` (see :func:`load`)."""
    factory = _FACTORIES.get(backend)
    if factory is None:
        raise BackendError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if nominal_elapsed is not None:
        check_stability(model, nominal_elapsed, allow_unstable)
    if isinstance(model, CfCModel):
        if backend not in CFC_BACKENDS:
            raise BackendError(f"{backend} backend: CfC is not supported yet; use backend='cpu'")
        if backend in ("cpu", "reference"):
            return (CfCCpuPolicy if backend == "cpu" else ReferencePolicy)(model, dtype, batch)
    return factory(model, dtype, batch, mapped)  # the cuda factory dispatches on the model type


def load(
    path: str | os.PathLike,
    backend: str = "cpu",
    dtype=np.float32,
    batch: int | None = None,
    mapped: bool = False,
    nominal_elapsed: float | None = None,
    allow_unstable: bool = False,
) -> Policy:
    """Load an edgeliquid model file (LTC or CfC) and return a warmed-up policy.

    Args:
        path: the ``.onnx`` model file.
        backend: ``"cpu"`` (numba), ``"reference"`` (numpy spec) or ``"cuda"`` (numba-cuda).
        dtype: ``np.float32`` or ``np.float64``.
        batch: None for one instance, or the number of instances stepped together.
        mapped: cuda only: zero-copy mapped host memory for x and y (integrated GPUs, Jetson).
        nominal_elapsed: the elapsed time (model time units) the caller will step with, e.g.
            ``(1 / rate_hz) / model_dt``; checked against the stability bound of an explicit
            solver (:func:`edgeliquid.model.guarantees.stability`). None: not checked.
        allow_unstable: beyond the bound, warn (``RuntimeWarning``) instead of raising.

    Raises:
        ModelFormatError: the file is not a valid edgeliquid model (the message names it).
        BackendError: unknown backend, or its hardware is missing.
        StabilityError: the model's solver is unstable at ``nominal_elapsed``.
    """
    from ..model.file import read

    return from_model(
        read(path),
        backend=backend,
        dtype=dtype,
        batch=batch,
        mapped=mapped,
        nominal_elapsed=nominal_elapsed,
        allow_unstable=allow_unstable,
    )


def check_stability(model: LTCModel | CfCModel, nominal_elapsed: float, allow_unstable: bool = False) -> None:
    """Raise :class:`StabilityError` (``allow_unstable``: warn) when the model's solver is
    unstable at ``nominal_elapsed`` model time units per step."""
    e = float(nominal_elapsed)
    if not (math.isfinite(e) and e > 0):
        raise InputError(f"nominal_elapsed must be finite and > 0, got {nominal_elapsed!r}")
    problem = stability_problem(model, e)
    if problem is None:
        return
    if not allow_unstable:
        raise StabilityError(f"{problem}, or allow_unstable=True (node config: allow_unstable: true)")
    warnings.warn(f"{problem}; stepping it anyway (allow_unstable=True)", RuntimeWarning, stacklevel=3)


register_backend("cpu", lambda model, dtype, batch, mapped: CpuPolicy(model, dtype, batch))
register_backend("reference", lambda model, dtype, batch, mapped: ReferencePolicy(model, dtype, batch))
