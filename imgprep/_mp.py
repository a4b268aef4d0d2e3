"""The multiprocessing context used by every process pool of imgprep."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

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


def resolve_workers(n: int) -> int:
    """A --workers value: n itself, or every available core for 0."""
    return n if n > 0 else cpu_count()


def pool_context():
    """forkserver where available, else spawn.

    Workers fork from a clean single-threaded server that imported the decoding libraries (and
    torch, when the caller uses it) once, so they start in milliseconds; a plain fork after the
    caller has used OpenCV's, DALI's or torch's thread pools can deadlock the children.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    extra = [m for m in ("torch", "webdataset", "imgprep.torch_loader") if m in sys.modules]
    ctx.set_forkserver_preload(_PRELOAD + extra)
    return ctx
