"""Executors run `prepare`'s units of work (one output shard each) and hand each record to the
driver as it finishes. Any executor gives byte-identical output: units are deterministic.

- LocalExecutor: a process pool on this machine; a dead worker's units are redone.
- RayExecutor: one Ray task per unit on a Ray cluster (or a local Ray instance); failed or lost
  tasks are retried by Ray. OUT must be a folder every node can write (a shared filesystem).
"""

from __future__ import annotations

from typing import Callable

from .errors import ImgprepError
from .prepare import _init_worker, run_unit

__all__ = ["LocalExecutor", "RayExecutor", "make_executor"]


class LocalExecutor:
    """Runs units in a pool of processes on this machine; a dead worker's units are redone."""

    max_attempts = 3

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, jobs: list[tuple], on_done: Callable[[dict], None], on_progress: Callable[[int], None]) -> None:
        """Run `run_unit(*job)` for every job; call on_done(record) in the driver as each finishes."""

        if self.workers == 1:  # in this process, on one core (OpenCV's own threads off meanwhile)
            import cv2

            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for job in jobs:
                    on_done(run_unit(*job, progress=on_progress))
            finally:
                cv2.setNumThreads(threads)
            return
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from ._mp import pool_context

        ctx = pool_context()
        counter = ctx.Value("q", 0)
        attempts = [0] * len(jobs)
        pending = set(range(len(jobs)))
        seen = 0
        while pending:
            pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,))
            futures = {pool.submit(run_unit, *jobs[i]): i for i in sorted(pending)}
            broken = False
            try:
                while futures and not broken:
                    done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    now = counter.value
                    on_progress(now - seen)
                    seen = now
                    for fut in done:
                        i = futures.pop(fut)
                        try:
                            rec = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            attempts[i] += 1
                            if attempts[i] >= self.max_attempts:
                                raise ImgprepError(
                                    f"unit {jobs[i][1].name} lost its worker process {self.max_attempts} times "
                                    "(out of memory? killed?); run the command again to resume") from None
                            continue
                        pending.discard(i)
                        on_done(rec)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)



def _ray_unit(*job) -> dict:
    _init_worker()
    return run_unit(*job)


class RayExecutor:
    """Runs units as Ray tasks; retries a task whose worker died or that raised."""

    def __init__(self, workers: int, address: str | None = None, max_retries: int = 3):
        self.workers, self.address, self.max_retries = workers, address, max_retries

    def run(self, jobs: list[tuple], on_done: Callable[[dict], None], on_progress: Callable[[int], None]) -> None:
        """Submit every unit, then merge records in the driver as tasks finish."""
        try:
            import ray
        except ImportError:
            raise ImgprepError('--executor ray needs Ray: pip install "imgprep[ray]"') from None
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=self.address, num_cpus=None if self.address else self.workers,
                         include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ImgprepError(f"--ray-address {self.address}: cannot connect to Ray ({exc})") from None
        task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=True)(_ray_unit)
        refs = {task.remote(*job): i for i, job in enumerate(jobs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    job = jobs[refs[ref]]
                    try:
                        rec = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                        raise ImgprepError(f"unit {job[1].name} failed {self.max_retries + 1} times on Ray ({msg}); "
                                           "run the command again to resume") from None
                    on_progress(len(job[1].items))
                    on_done(rec)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def make_executor(kind: str, workers: int, ray_address: str | None = None):
    """The executor named by `--executor`."""
    if kind == "ray":
        return RayExecutor(workers, ray_address)
    return LocalExecutor(workers)
