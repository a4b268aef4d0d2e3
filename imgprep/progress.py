"""Progress for long commands: a tqdm bar on a terminal, plain lines anywhere else.

`imgprep train ... > log 2>&1` must give a log a person can read: carriage-return bars written to a
file become one enormous line, so off a terminal progress is a line every `interval` seconds
(and one at the end when `leave`), with the same figures.
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress_bar", "PlainProgress"]


class PlainProgress:
    """tqdm's update / set_postfix / close, printed as whole lines to `stream`."""

    def __init__(self, total: int, desc: str, unit: str, stream, interval: float = 30.0, leave: bool = True):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.interval, self.leave = interval, leave
        self.n, self.postfix = 0, ""
        self.t0 = self.t_line = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.t_line >= self.interval:
            self._line()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if self.leave:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.t_line = now
        rate = self.n / (now - self.t0) if now > self.t0 else 0.0
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}{pct}, {rate:,.1f} {self.unit}/s{tail}\n")
        self.stream.flush()


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, leave: bool = True, stream=None):
    """A tqdm bar where `stream` (stderr) is a terminal, a `PlainProgress` elsewhere, nothing when disabled."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Off()
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return PlainProgress(total, desc, unit, stream, leave=leave)
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread polling in the driver
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, smoothing=0.1, file=stream)
