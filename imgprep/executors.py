"""Executors: run one function over many independent jobs, handing each result to the caller as
it finishes. They know nothing of what a job is beyond the `Job` protocol.

- LocalExecutor: a process pool on this machine; a dead worker's jobs are redone.
- RayExecutor: one Ray task per job on a Ray cluster (or a local Ray instance); failed or lost
  tasks are retried by Ray. Whatever a job writes must go where every node can write.

`fn(job, progress)` is called with `progress(n)`, a callable that reports n finished items of the
job's `weight` while it runs (None where the executor cannot relay it: then the whole weight is
reported when the job ends).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._mp import init_worker
from .errors import ImgprepError

__all__ = ["Job", "LocalExecutor", "RayExecutor", "make_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray")

Progress = Callable[[int], None]
JobFn = Callable[[Any, "Progress | None"], Any]


class Job(Protocol):
    """What an executor needs of a job: a name for messages and a weight (progress units)."""

    name: str
    weight: int


_counter = None  # in pool workers: the shared progress counter, set by _init_worker


def _init_worker(counter, parent: int) -> None:
    """Pool worker start-up: the progress counter, and imgprep's worker set-up (`_mp.init_worker`)."""
    global _counter
    _counter = counter
    init_worker(parent)


def _count(n: int) -> None:
    with _counter.get_lock():
        _counter.value += n


def _call_in_worker(fn: JobFn, job):
    return fn(job, _count if _counter is not None else None)


class LocalExecutor:
    """Runs jobs in a pool of processes on this machine (in this process for one worker)."""

    max_attempts = 3

    def __init__(self, workers: int, fork_ok: bool = False):
        self.workers = workers
        self.fork_ok = fork_ok  # the caller holds no connection a forked worker could share (`pool_context`)

    def run(self, fn: JobFn, jobs: Sequence[Job], on_done: Callable[[Any], None], on_progress: Progress) -> None:
        """Call `fn(job, progress)` for every job; `on_done(result)` runs here as each one finishes."""
        if self.workers == 1:
            self._run_here(fn, jobs, on_done, on_progress)
        else:
            self._run_pool(fn, jobs, on_done, on_progress)

    @staticmethod
    def _run_here(fn: JobFn, jobs, on_done, on_progress) -> None:
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # one core, as a pool worker would have
        try:
            for job in jobs:
                on_done(fn(job, on_progress))
        finally:
            cv2.setNumThreads(threads)

    def _run_pool(self, fn: JobFn, jobs, on_done, on_progress) -> None:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from ._mp import fork_is_safe, pool_context

        ctx = pool_context(self.fork_ok)
        counter = ctx.Value("q", 0)
        attempts = [0] * len(jobs)
        pending = set(range(len(jobs)))
        seen = 0
        while pending:  # one pool per round: a pool whose worker died is broken for good
            if ctx.get_start_method() == "fork" and not fork_is_safe():  # a thread left by the last round
                ctx = pool_context()
            pool = ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_init_worker, initargs=(counter, os.getpid())
            )
            futures = {pool.submit(_call_in_worker, fn, jobs[i]): i for i in sorted(pending)}
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
                            result = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            self._count_attempt(attempts, i, jobs[i])
                            continue
                        pending.discard(i)
                        on_done(result)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _count_attempt(self, attempts: list[int], i: int, job: Job) -> None:
        attempts[i] += 1
        if attempts[i] >= self.max_attempts:
            raise ImgprepError(
                f"{job.name} lost its worker process {self.max_attempts} times "
                "(out of memory? killed?); run the command again to resume"
            )


class RayExecutor:
    """Runs jobs as Ray tasks; retries a task whose worker died or that raised."""

    def __init__(self, workers: int, address: str | None = None, max_retries: int = 3):
        self.workers, self.address, self.max_retries = workers, address, max_retries

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise ImgprepError('--executor ray needs Ray: pip install "imgprep[ray]"') from None
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(
                    address=self.address,
                    num_cpus=None if self.address else self.workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ImgprepError(f"--ray-address {self.address}: cannot connect to Ray ({exc})") from None
        return ray, started

    def run(self, fn: JobFn, jobs: Sequence[Job], on_done: Callable[[Any], None], on_progress: Progress) -> None:
        """Submit every job, then hand results to `on_done` here as tasks finish."""
        ray, started = self._connect()
        task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=True)(_ray_task)
        refs = {task.remote(fn, job): i for i, job in enumerate(jobs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    job = jobs[refs[ref]]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                        raise ImgprepError(
                            f"{job.name} failed {self.max_retries + 1} times on Ray ({msg}); "
                            "run the command again to resume"
                        ) from None
                    on_progress(job.weight)
                    on_done(result)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def _ray_task(fn: JobFn, job):
    import cv2

    cv2.setNumThreads(1)  # Ray runs one task per CPU
    return fn(job, None)


def make_executor(kind: str, workers: int, ray_address: str | None = None, fork_ok: bool = False):
    """The executor named by `--executor` (`fork_ok`: see `LocalExecutor`)."""
    if kind == "ray":
        return RayExecutor(workers, ray_address)
    return LocalExecutor(workers, fork_ok)
