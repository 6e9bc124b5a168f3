"""Runs a job's tasks in this process or on Ray; results come back in task order either way.

A job is a module-level function ``fn(task) -> result`` and a list of tasks of bounded size.
:meth:`Engine.map` returns one entry per task, in the tasks' order (a :class:`TaskFailure`
where a task failed twice: it is retried once), so merging never depends on which worker
finished first: the same job gives the same results in-process and on any number of workers.
In-process, tasks run one after another on all of numba's threads; on Ray each task runs its
kernels on as many threads as CPUs Ray assigned it. A job may come in two stages,
``fn(prepare(task))``: in-process, ``prepare`` of the next task (reading files: Python, under
the GIL) then runs on a helper thread while ``fn`` of this one runs its kernels (which release
the GIL), one task ahead at most. Ray (``pip install -e '.[fleet]'``) is
imported only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import BackendError

RAY_MISSING = "--ray needs Ray, which is not installed: pip install -e '.[fleet]' (or pip install ray)"


@dataclass(frozen=True)
class TaskFailure:
    """A task that failed on its first try and on its retry; ``error`` is the last one, one line."""

    index: int
    error: str


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def local_pythonpath() -> str:
    """PYTHONPATH with the folder holding this edgeliquid package first."""
    from pathlib import Path

    here = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def numba_threads_for(cpus: float) -> int:
    """numba threads for a task given ``cpus`` CPUs: at least 1, at most numba's pool."""
    import numba

    return max(1, min(int(cpus), numba.config.NUMBA_NUM_THREADS))


def _call(fn: Callable[[Any], Any], task: Any) -> Any:
    """What a Ray worker runs: one task on as many numba threads as CPUs Ray assigned it.

    A worker's numba pool has a thread per core of its node (NUMBA_NUM_THREADS), so without
    this every task of a busy node would run its parallel kernels on all of the node's cores.
    """
    import numba
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    numba.set_num_threads(numba_threads_for(cpus))
    return fn(task)


def _run_task(fn: Callable[[Any], Any], task: Any, i: int) -> Any:
    """``fn(task)``, retried once; a :class:`TaskFailure` after the second failure."""
    for _ in range(2):
        try:
            return fn(task)
        except Exception as exc:  # a task's failure is reported, never fatal to the job
            r = TaskFailure(i, _one_line(exc))
    return r


def _staged(fn: Callable[[Any], Any], prepare: Callable[[Any], Any], task: Any) -> Any:
    """Both stages of a task, one after the other (module level: Ray pickles it by reference)."""
    return fn(prepare(task))


class Engine:
    """In-process (``ray=None``), a local Ray (``ray="local"``, ``workers`` CPUs) or a cluster
    (``ray="ray://host:10001"`` / ``"host:6379"`` / ``"auto"``).

    A Ray this engine started is shut down by :meth:`close`; one already running (a test's
    fixture, a notebook) is used as it is and left running.
    """

    def __init__(self, ray: str | None = None, workers: int | None = None):
        self.ray_address = ray
        self.workers = workers
        self._ray = None
        self._started = False
        if ray is not None:
            try:
                import ray as ray_mod
            except ImportError:
                raise BackendError(RAY_MISSING) from None
            self._ray = ray_mod
            if not ray_mod.is_initialized():
                kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
                if ray == "local":
                    # Workers inherit the environment: they import this very edgeliquid (a
                    # checkout, not another install). Cheaper than a runtime_env.
                    os.environ["PYTHONPATH"] = local_pythonpath()
                    ray_mod.init(num_cpus=workers or os.cpu_count() or 1, **kw)
                else:
                    try:
                        ray_mod.init(address=ray, **kw)
                    except (ConnectionError, RuntimeError, ValueError) as exc:
                        raise BackendError(
                            f"--ray {ray}: cannot join the cluster: {_one_line(exc)}"
                        ) from None
                self._started = True

    @property
    def description(self) -> str:
        if self._ray is None:
            return "in-process"
        cpus = int(self._ray.cluster_resources().get("CPU", 0))
        return f"ray ({'local' if self.ray_address == 'local' else self.ray_address}, {cpus} CPUs)"

    def map(
        self,
        fn: Callable[[Any], Any],
        tasks: Sequence[Any],
        on_done: Callable[[int, Any], None] | None = None,
        prepare: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """``[fn(t) for t in tasks]`` (``[fn(prepare(t)) ...]`` with ``prepare``), each failed
        task retried once, then a :class:`TaskFailure`.

        ``on_done(index, result_or_failure)`` is called as each task finishes (progress).
        """
        on_done = on_done or (lambda i, r: None)
        if self._ray is None:
            if prepare is not None:
                return self._map_local_staged(fn, prepare, tasks, on_done)
            return self._map_local(fn, tasks, on_done)
        return self._map_ray(fn if prepare is None else partial(_staged, fn, prepare), tasks, on_done)

    @staticmethod
    def _map_local(fn, tasks, on_done) -> list[Any]:
        # One task at a time on all of numba's threads (the kernels are parallel over rows or
        # chunks of rows). Tasks on threads of their own were measured too: the sweep ran as
        # fast, replay ~10 % slower (its recordings are read in Python, under the GIL).
        out: list[Any] = []
        for i, task in enumerate(tasks):
            out.append(_run_task(fn, task, i))
            on_done(i, out[-1])
        return out

    @staticmethod
    def _map_local_staged(fn, prepare, tasks, on_done) -> list[Any]:
        # prepare(task i+1) on one helper thread while fn(task i) runs here: one task ahead
        # at most, so at most two tasks' inputs are held. A failure in either stage retries
        # the whole task once, both stages here.
        out: list[Any] = []
        with ThreadPoolExecutor(1, thread_name_prefix="edgeliquid-prepare") as pool:
            ahead = pool.submit(prepare, tasks[0]) if len(tasks) else None
            for i, task in enumerate(tasks):
                current = ahead
                ahead = pool.submit(prepare, tasks[i + 1]) if i + 1 < len(tasks) else None
                try:
                    r = fn(current.result())
                except Exception:  # the one retry: both stages again, in this thread
                    try:
                        r = _staged(fn, prepare, task)
                    except Exception as exc:
                        r = TaskFailure(i, _one_line(exc))
                out.append(r)
                on_done(i, r)
        return out

    def _map_ray(self, fn, tasks, on_done) -> list[Any]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(_call)
        fn_ref = ray.put(fn)
        # Bounded in flight: results are consumed as they come, never all held at once.
        limit = max(4, 4 * int(ray.cluster_resources().get("CPU", 1)))
        out: list[Any] = [None] * len(tasks)
        attempts = [0] * len(tasks)
        pending: dict[Any, int] = {}
        queue = list(range(len(tasks)))[::-1]

        def submit(i: int) -> None:
            attempts[i] += 1
            pending[remote.remote(fn_ref, tasks[i])] = i

        while queue or pending:
            while queue and len(pending) < limit:
                submit(queue.pop())
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                r = ray.get(ready[0])
            except Exception as exc:  # the task raised, or its worker died
                if attempts[i] < 2:
                    submit(i)
                    continue
                r = TaskFailure(i, _one_line(getattr(exc, "cause", None) or exc))
            out[i] = r
            on_done(i, r)
        return out

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
