"""Throughput measurement, the one timing helper of `imgprep load`, `imgprep bench` and `benchmarks/`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

__all__ = ["Throughput", "machine_ticks", "cores_busy", "real_samples", "time_loader"]


def machine_ticks(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, all) clock ticks of this machine's CPUs since boot, from the first line of
    /proc/stat (busy: all but idle and iowait; steal counts as busy, as it is time this machine's
    work wanted and did not get); None where there is no /proc/stat."""
    try:
        with open(path) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def cores_busy(start: tuple[int, int] | None, end: tuple[int, int] | None, cores: int | None = None) -> float | None:
    """How many of the machine's cores were busy on average between two `machine_ticks` readings
    (whatever ran: this process, its workers and anything else), or None."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    cores = cores or os.cpu_count() or 1
    return round(cores * (end[0] - start[0]) / (end[1] - start[1]), 2)


class Throughput:
    """Images/s over a run of steps. The clock starts at the end of the first `warmup` steps
    (pipeline build, worker start-up, compilation are not timed).

    Args:
        warmup: steps not timed.
        sync: called before the clock is read at the start and at the end (e.g. a CUDA
            synchronize, so that queued GPU work is counted); never between steps.
    """

    def __init__(self, warmup: int = 1, sync: Callable[[], None] | None = None):
        self.warmup, self.sync = warmup, sync
        self.steps = self.images = self.timed_images = 0
        self.latencies: list[float] = []
        self.created = time.perf_counter()
        self.first_step_at: float | None = None  # perf_counter at the end of the first step
        self._start = self._last = None
        self._ticks = None  # machine_ticks() when the clock started
        if warmup == 0:
            self._start = self._last = self._now()
            self._ticks = machine_ticks()

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def step(self, images: int) -> None:
        """One step (a batch) of `images` real samples has finished."""
        self.steps += 1
        self.images += images
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        if self.steps <= self.warmup:
            if self.steps == self.warmup:
                self._start = self._last = self._now()
                self._ticks = machine_ticks()
            return
        now = time.perf_counter()
        self.latencies.append(now - self._last)
        self._last = now
        self.timed_images += images

    @property
    def seconds(self) -> float:
        """Timed seconds so far (0 before the first timed step)."""
        return (self._now() - self._start) if self.latencies else 0.0

    @property
    def images_per_second(self) -> float | None:
        s = self.seconds
        return self.timed_images / s if s > 0 else None

    def result(self) -> dict:
        """images, batches, images_per_second, the median and p90 batch latency (ms), and how many
        of the machine's cores were busy while the clock ran (`cores_busy`: a loader that leaves
        cores idle is waiting on something other than decoding)."""
        ips = self.images_per_second
        lat = self.latencies
        return {
            "images": self.images,
            "batches": self.steps,
            "images_per_second": round(ips, 1) if ips else None,
            "cores_busy": cores_busy(self._ticks, machine_ticks()) if lat else None,
            "batch_latency_ms": {
                "median": round(1000 * float(np.median(lat)), 2),
                "p90": round(1000 * float(np.percentile(lat, 90)), 2),
            }
            if lat
            else None,
        }


def real_samples(labels) -> int:
    """Samples of a batch that are not padding (label >= 0)."""
    return int((labels >= 0).sum()) if hasattr(labels, "shape") else len(labels)


def time_loader(
    loader, epochs: int = 1, steps: int | None = None, warmup: int = 1, started: float | None = None
) -> dict:
    """Iterate a loader for `epochs` epochs (calling `set_epoch` for each where it has one), or
    for `steps` batches in all (as many epochs as that takes); return `Throughput.result()` and
    `first_batch_seconds`: from `started` (a perf_counter reading, e.g. before the loader was
    made; default: now) to the first batch in hand."""
    timer = Throughput(warmup)
    started = started if started is not None else timer.created
    result = _iterate(loader, timer, epochs, steps)
    first = timer.first_step_at
    return {**result, "first_batch_seconds": round(first - started, 3) if first is not None else None}


def _iterate(loader, timer: Throughput, epochs: int, steps: int | None) -> dict:
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        before = timer.steps
        for _images, labels in loader:
            timer.step(real_samples(labels))
            if steps is not None and timer.steps >= steps:
                return timer.result()
        epoch += 1
        if (steps is None and epoch >= epochs) or timer.steps == before:  # done, or an empty loader
            return timer.result()
