"""The one interface through which memloc fans work out: a list of picklable jobs and a
top-level function, run in this process (`SequentialExecutor`) or on Ray (`RayExecutor`).

memloc ships no scheduler of its own. Jobs must be idempotent (each writes its own
folder and skips what is already there), so a run resumes, and gives the same result,
whatever executor ran it and in whatever order.

Example::

    results = SequentialExecutor().map(run_member_job, jobs, progress=print_progress)
    results = RayExecutor(num_cpus=8).map(run_member_job, jobs)  # same results, in job order
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from memloc.core.errors import MemlocError
from memloc.core.progress import Progress

J = TypeVar("J")
R = TypeVar("R")

RAY_INSTALL = "--executor ray needs Ray, which is not installed: pip install 'memloc[ray]'"


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], progress: Progress | None = None) -> list[R]:
        """``[fn(job) for job in jobs]``, in job order; ``progress(done, total, "")`` as jobs finish."""
        ...


class SequentialExecutor:
    """Jobs one after another in this process (tests, CI, one device)."""

    name = "sequential"

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], progress: Progress | None = None) -> list[R]:
        results = []
        for i, job in enumerate(jobs):
            results.append(fn(job))
            if progress:
                progress(i + 1, len(jobs), "")
        return results


def import_ray() -> Any:
    """The ray module, or the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MemlocError(RAY_INSTALL, field="executor") from None
    return ray


class RayExecutor:
    """Jobs as Ray tasks: a local Ray on this machine's CPUs (and GPUs) unless ``address`` names a cluster.

    Each task asks for ``cpus_per_job`` CPUs (Ray then sets OMP_NUM_THREADS to match) and
    ``gpus_per_job`` GPUs, fractional to share one. Workers get the driver's PYTHONPATH (a
    local Ray's inherit it, a cluster's get it in their runtime_env), so they import the
    same memloc. A Ray this executor started is shut down afterwards.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        cpus_per_job: float = 1.0,
        gpus_per_job: float = 0.0,
    ) -> None:
        self.ray = import_ray()  # here, so a missing Ray is refused before any work or file
        if not gpus_per_job >= 0:
            raise MemlocError(f"gpus_per_job must be at least 0, got {gpus_per_job}", field="gpus_per_job")
        if not cpus_per_job > 0:
            raise MemlocError(f"cpus_per_job must be positive, got {cpus_per_job}", field="cpus_per_job")
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_job, self.gpus_per_job = cpus_per_job, gpus_per_job

    def _runtime_env(self) -> dict:
        # A cluster's workers do not inherit this process's environment (a local Ray's do, and
        # a runtime_env there would only start a second pool of workers).
        path = os.environ.get("PYTHONPATH")
        return {"env_vars": {"PYTHONPATH": path}} if path else {}

    def _start(self) -> bool:
        """Start or join Ray; True when this call started it (and so must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        if self.address:
            ray.init(address=self.address, runtime_env=self._runtime_env(), log_to_driver=False)
        else:
            ray.init(
                num_cpus=self.num_cpus or os.cpu_count(),
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
            )
        return True

    def _get(self, refs: list) -> list:
        """ray.get, with a job's MemlocError raised as itself (one line), not inside Ray's traceback."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, MemlocError):
                raise exc.cause from None
            raise

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], progress: Progress | None = None) -> list[R]:
        if not jobs:
            return []
        ray = self.ray
        started = self._start()
        refs: list = []
        try:
            remote = ray.remote(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job, max_retries=0)(fn)
            refs = [remote.remote(job) for job in jobs]
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                self._get(ready)  # a failed job raises here, at once
                if progress:
                    progress(len(refs) - len(pending), len(refs), "")
            return self._get(refs)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()
