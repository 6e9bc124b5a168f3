"""CUDA backend (numba-cuda): many instances stepped at once on an NVIDIA GPU.

Thread mapping: one thread per instance. A driving-size NCP has ~90 synapses and
19 neurons, too few to fill a block with thread-per-neuron work, while fleets and
ensembles have thousands of instances; with one thread per instance every thread
walks the same synapse list (parameter reads are warp-uniform broadcasts) and
the per-instance state lives in [units, batch] arrays, so consecutive threads
touch consecutive addresses (coalesced). Sparse wirings cost only their synapses.

Device-resident: parameters, state and scratch stay on the GPU between steps;
per step only x goes up and y comes down (or nothing is copied at all with
``mapped=True``, zero-copy host memory for integrated GPUs such as Jetson).
Plain device allocations otherwise; never managed memory.

CfC models get :class:`CfCCudaPolicy` (same mapping; kernel in
:mod:`edgeliquid.runtime.cfc_cuda_kernels`, reading the cpu backend's packed arrays).

Tested under ``NUMBA_ENABLE_CUDASIM=1`` (the CPU simulator) in CI; the same
tests run unchanged on a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendError, InputError
from ..model.cell import LTCModel
from ..model.cfc import CfCModel
from .cfc_packing import CfCPacked
from .packing import Packed
from .policy import Policy, register_backend

STATUS_OK, STATUS_BAD_INPUT, STATUS_BAD_ELAPSED, STATUS_BAD_OUTPUT, STATUS_BAD_SOLVER = 0, 1, 2, 3, 4
THREADS = 128  # threads per block


def _cuda():
    try:
        from numba import cuda
    except ImportError:
        raise BackendError(
            "the cuda backend needs numba-cuda: pip install 'edgeliquid[cuda]'; or use backend='cpu'"
        ) from None
    try:
        ok = cuda.is_available()
    except Exception as exc:  # driver library present but broken
        raise BackendError(f"CUDA driver error ({exc}); use backend='cpu'") from None
    if not ok:
        raise BackendError("no CUDA device or driver found; use backend='cpu' (numba on the CPU)")
    return cuda


def _kernels():
    """The compiled kernels (numba-cuda compiles lazily per signature, once per process)."""
    _cuda()
    from . import cuda_kernels

    return cuda_kernels


class CudaPolicy(Policy):
    """Batched LTC stepping on the GPU; same API and numbers as :class:`CpuPolicy`.

    The state of an instance whose inputs are bad is left untouched and an
    :class:`InputError` names the first such row; other rows still step (they are
    independent), unlike the cpu backend which validates the whole batch first.
    """

    backend = "cuda"

    def __init__(self, model: LTCModel, dtype=np.float32, batch: int | None = None, mapped: bool = False):
        super().__init__(model, dtype, batch)
        cuda = _cuda()
        self._run = _kernels().run_kernel
        packed = Packed(model, self.dtype)
        rows = 1 if self.batch is None else self.batch
        u, n_in, m = model.config.units, model.config.n_inputs, model.config.motor_size
        self._rows = rows
        self._d_fp = cuda.to_device(packed.fp)
        self._d_ip = cuda.to_device(packed.ip)
        dt = self.dtype
        self._d_state = cuda.to_device(np.zeros((self.n_state, rows), dt))
        # v, vnext (RK4: k1 + 2 k2 + 2 k3), nums, dens, numr, denr, the RK4 stage input
        self._scratch = [cuda.device_array((u, rows), dt) for _ in range(7)]
        self._d_xm = cuda.device_array((model.config.cell_inputs, rows), dt)
        self._d_z = cuda.device_array((4 * u if model.config.mixed_memory else 1, rows), dt)
        self._d_status = cuda.device_array(rows, np.int32)
        self.mapped = mapped
        alloc = cuda.mapped_array if mapped else cuda.pinned_array
        self._hx = alloc((1, rows, n_in), dt)
        self._he = alloc((1, rows), dt)
        self._hy = alloc((1, rows, m), dt)
        if mapped:
            self._dx, self._de, self._dy = self._hx, self._he, self._hy
        else:
            self._dx = cuda.device_array((1, rows, n_in), dt)
            self._de = cuda.device_array((1, rows), dt)
            self._dy = cuda.device_array((1, rows, m), dt)
        self._grid = (rows + THREADS - 1) // THREADS
        self._y = self._hy[0, 0] if self.batch is None else self._hy[0]
        self._cuda = cuda
        self._launch(self._hx, self._he, self._hy, self._dx, self._de, self._dy, warm=True)

    def _launch(self, hx, he, hy, dx, de, dy, warm: bool = False) -> None:
        state_backup = self._d_state.copy_to_host() if warm else None
        if not self.mapped or dx is not hx:
            dx.copy_to_device(hx)
            de.copy_to_device(he)
        if warm:
            he[...] = 1
            if dx is not hx:
                de.copy_to_device(he)
        self._call_kernel(dx, de, dy)
        if dy is not hy:
            dy.copy_to_host(hy)
        else:
            self._cuda.synchronize()
        if warm:
            self._d_state.copy_to_device(state_backup)

    def _call_kernel(self, dx, de, dy) -> None:
        s = self._scratch
        self._run[self._grid, THREADS](
            dx,
            de,
            self._d_fp,
            self._d_ip,
            self._d_state,
            dy,
            s[0],
            s[1],
            self._d_xm,
            s[2],
            s[3],
            s[4],
            s[5],
            self._d_z,
            s[6],
            self._d_status,
        )

    def _check_status(self) -> None:
        status = self._d_status.copy_to_host()
        bad = np.flatnonzero(status)
        if bad.size:
            row, code = int(bad[0]), int(status[bad[0]])
            what = {
                STATUS_BAD_INPUT: "x must be finite",
                STATUS_BAD_ELAPSED: "elapsed must be finite and > 0",
                STATUS_BAD_OUTPUT: "the step produced a non-finite state",
                STATUS_BAD_SOLVER: "the packed model names no known solver",
            }[code]
            where = "" if self.batch is None else f" (batch row {row}, {bad.size} rows in all)"
            raise InputError(f"{what}{where}; that row's state unchanged")

    def step(self, x: Any, elapsed: float | np.ndarray = 1.0) -> np.ndarray:
        """One step for every instance; see :meth:`CpuPolicy.step`."""
        x = np.asarray(x)
        if x.shape != self._xshape:
            raise InputError(f"x: expected shape {self._xshape}, got {x.shape}")
        self._hx[0] = x.reshape(self._rows, -1)
        e = np.asarray(elapsed, np.float64)
        if e.shape not in ((), (self._rows,)):
            raise InputError(f"elapsed: expected a scalar or shape ({self._rows},), got {e.shape}")
        self._he[0] = e
        self._launch(self._hx, self._he, self._hy, self._dx, self._de, self._dy)
        self._check_status()
        self._count_unstable(e, one_step=True)  # steps beyond the solver's stability bound
        return self._y

    def run(self, xs: Any, elapsed: Any = None) -> np.ndarray:
        """A whole sequence in one launch: [T, (B,) I] -> [T, (B,) M]."""
        xs, e = self._check_sequence(xs, elapsed)
        cuda = self._cuda
        t = xs.shape[0]
        hx = np.ascontiguousarray(xs.reshape(t, self._rows, -1), self.dtype)
        he = np.ascontiguousarray(e.reshape(t, self._rows), self.dtype)
        hy = np.empty((t, self._rows, self.n_outputs), self.dtype)
        dx, de, dy = cuda.to_device(hx), cuda.to_device(he), cuda.device_array_like(hy)
        self._launch(hx, he, hy, dx, de, dy)
        self._check_status()
        self._count_unstable(e)
        return hy[:, 0] if self.batch is None else hy

    def reset(self) -> None:
        self._d_state.copy_to_device(np.zeros((self.n_state, self._rows), self.dtype))

    @property
    def state(self) -> np.ndarray:
        s = self._d_state.copy_to_host().T.copy()
        return s[0] if self.batch is None else s

    @state.setter
    def state(self, value: Any) -> None:
        s = self._checked_state(value).reshape(self._rows, self.n_state)
        self._d_state.copy_to_device(np.ascontiguousarray(s.T))


class CfCCudaPolicy(CudaPolicy):
    """Batched CfC stepping on the GPU (:mod:`edgeliquid.runtime.cfc_cuda_kernels`).

    Same API, checks and status handling as :class:`CudaPolicy`; the kernel reads the cpu
    backend's packed arrays (:class:`~edgeliquid.runtime.cfc_packing.CfCPacked`) and keeps each
    instance's work row on the device, the state being its first ``n_state`` entries.

    Args:
        sparse: as :class:`CfCPacked` (None: the packer's choice).
    """

    def __init__(
        self,
        model: CfCModel,
        dtype=np.float32,
        batch: int | None = None,
        mapped: bool = False,
        sparse: bool | None = None,
    ):
        Policy.__init__(self, model, dtype, batch)
        cuda = _cuda()
        from . import cfc_cuda_kernels

        self._run = cfc_cuda_kernels.kernel_for(self.dtype)
        packed = CfCPacked(model, self.dtype, sparse)
        rows = 1 if self.batch is None else self.batch
        n_in, n_out, dt = self.n_inputs, self.n_outputs, self.dtype
        self._rows = rows
        self._d_fp = cuda.to_device(packed.fp)
        self._d_ip = cuda.to_device(packed.ip)
        self._d_work = cuda.to_device(np.zeros((packed.work_size, rows), dt))
        self._d_state = self._d_work[: self.n_state]  # a contiguous view: leading rows
        self._d_status = cuda.device_array(rows, np.int32)
        self.mapped = mapped
        alloc = cuda.mapped_array if mapped else cuda.pinned_array
        self._hx = alloc((1, rows, n_in), dt)
        self._he = alloc((1, rows), dt)
        self._hy = alloc((1, rows, n_out), dt)
        self._hx[...] = 0
        if mapped:
            self._dx, self._de, self._dy = self._hx, self._he, self._hy
        else:
            self._dx = cuda.device_array((1, rows, n_in), dt)
            self._de = cuda.device_array((1, rows), dt)
            self._dy = cuda.device_array((1, rows, n_out), dt)
        self._grid = (rows + THREADS - 1) // THREADS
        self._y = self._hy[0, 0] if self.batch is None else self._hy[0]
        self._cuda = cuda
        self._launch(self._hx, self._he, self._hy, self._dx, self._de, self._dy, warm=True)

    def _call_kernel(self, dx, de, dy) -> None:
        self._run[self._grid, THREADS](dx, de, self._d_fp, self._d_ip, self._d_work, dy, self._d_status)


def _make_policy(model, dtype, batch, mapped: bool) -> Policy:
    cls = CfCCudaPolicy if isinstance(model, CfCModel) else CudaPolicy
    return cls(model, dtype, batch, mapped=mapped)


def bench_cuda(model: LTCModel, batches=(1, 64, 1024, 65536), steps: int = 50) -> dict:
    """Instance-steps/s of the cuda backend per batch size (one process, same model)."""
    import time

    from .policy import from_model

    cuda = _cuda()
    name = cuda.get_current_device().name
    out = {"device": name.decode() if isinstance(name, bytes) else str(name)}
    rows = {}
    for b in batches:
        pol = from_model(model, "cuda", np.float32, batch=b)
        x = np.random.default_rng(0).uniform(-1, 1, (b, model.config.n_inputs)).astype(np.float32)
        pol.step(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            pol.step(x)
        dt = (time.perf_counter() - t0) / steps
        xs = np.repeat(x[None], steps, 0)
        t1 = time.perf_counter()
        pol.run(xs)
        dt_run = (time.perf_counter() - t1) / steps
        rows[str(b)] = {
            "step_us": dt * 1e6,
            "run_us_per_step": dt_run * 1e6,
            "instance_steps_per_s_step": b / dt,
            "instance_steps_per_s_run": b / dt_run,
        }
    out["batches"] = rows
    return out


register_backend("cuda", _make_policy)
