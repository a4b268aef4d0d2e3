"""The multiprocessing context used by every process pool of imgprep, and the guards every worker
and every long run share: workers end with the process that started them, and Ctrl-C always stops."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time

_PRELOAD = [
    "imgprep.prepare",
    "imgprep.codec",
    "imgprep.geometry",
    "cv2",
    "PIL.Image",
    "PIL.JpegImagePlugin",
    "simplejpeg",
    "numpy",
]


def cpu_count() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


_NOTED: set[int] = set()


def resolve_workers(n: int, bound: bool = True) -> int:
    """A --workers value: every available core for 0; n itself, at most the cores this process may
    run on (with one note line per value), since more processes or threads than cores only cost
    memory and start-up time. `bound=False` for a cluster's workers (Ray), which are not this
    machine's."""
    cores = cpu_count()
    if n <= 0:
        return cores
    if bound and n > cores:
        if n not in _NOTED:
            _NOTED.add(n)
            print(f"note: --workers {n} is more than the {cores} cores here; using {cores}", file=sys.stderr)
        return cores
    return n


# imported here, they may have started native thread pools whose locks a forked child inherits held
_THREADED = ("cv2", "torch", "nvidia.dali", "numba", "ray", "tensorflow", "jax", "grpc")


def fork_is_safe() -> bool:
    """Whether this process can fork its workers directly: Linux, no thread but this one, and none
    of the libraries that keep native thread pools imported (numpy's BLAS pool handles fork)."""
    return (
        sys.platform.startswith("linux")
        and "fork" in mp.get_all_start_methods()
        and threading.active_count() == 1
        and not any(m in sys.modules for m in _THREADED)
    )


def pool_context(fork_ok: bool = False):
    """fork where the caller allows it (`fork_ok`: no open connections a child could share) and
    `fork_is_safe()`; else forkserver where available, else spawn.

    A forked worker starts at once with what this process imported; a forkserver worker forks from
    a clean single-threaded server that imported the decoding libraries (and torch, when the caller
    uses it) once, which costs that server's start (about 0.35 s, before the first job) but is safe
    after the caller has used OpenCV's, DALI's or torch's thread pools, where a plain fork can
    deadlock the children.
    """
    if fork_ok and fork_is_safe():
        return mp.get_context("fork")
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    extra = [m for m in ("torch", "webdataset", "imgprep.torch_loader") if m in sys.modules]
    ctx.set_forkserver_preload(_PRELOAD + extra)
    return ctx


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know


def exit_with(pid: int, interval: float = 0.5) -> None:
    """In a worker: end this process (at once, without cleanup) soon after process `pid` is gone.

    Workers fork from the forkserver, not from the process that uses them, so nothing else tells
    them that their user was killed (kill -9, OOM): without this they, the forkserver and the
    resource tracker would run on after it.
    """

    def watch():
        while _alive(pid):
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="imgprep-exit-with-parent", daemon=True).start()


def init_worker(parent: int) -> None:
    """Initializer of every imgprep pool worker: exit with `parent`; one native thread per process
    (the pool already runs a process per core); Ctrl-C is the parent's to handle."""
    exit_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the caller's handler
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


class InterruptGuard:
    """Remembers SIGINT while a run is in progress, so that `check()` stops it at the next step.

    A Ctrl-C that lands while C code calls back into Python (numba compiling, a DALI callback)
    raises KeyboardInterrupt inside that callback, where it is printed as "Exception ignored" and
    lost; the flag set here is not. With `terminate`, SIGTERM (a cluster scheduler's notice before
    it kills a job) only sets `terminated`: the run finishes its step, saves where it is and ends.
    Use as a context manager in the main thread; elsewhere it only checks.
    """

    def __init__(self, terminate: bool = False):
        self.interrupted = False
        self.terminated = False
        self.terminate = terminate
        self._previous: dict = {}

    def _handler(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def _on_term(self, signum, frame):
        self.terminated = True

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
            if self.terminate:
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C came, even one that was swallowed."""
        if self.interrupted:
            raise KeyboardInterrupt
