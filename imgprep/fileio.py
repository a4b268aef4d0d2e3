"""Writing files so that a reader never sees half of one: every writer of imgprep goes through here.

A file is written under a temporary name beside its final one (`.NAME.partial`), flushed to disk,
and renamed over the final name in one step; on any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO

from .errors import ImgprepError

__all__ = [
    "is_url",
    "PARTIAL_SUFFIX",
    "partial_path",
    "AtomicWriter",
    "atomic_file",
    "write_atomic",
    "json_bytes",
    "write_json_atomic",
    "is_utf8",
    "file_signature",
]

PARTIAL_SUFFIX = ".partial"

# Here, not in `remote`, so that telling a local path from a URL does not import the HTTP client
URL_SCHEMES = ("s3", "http", "https")


def is_url(s) -> bool:
    """Whether `s` names a dataset at a URL (s3://, http://, https://) rather than a local path."""
    return isinstance(s, str) and s.split("://", 1)[0].lower() in URL_SCHEMES and "://" in s


def is_utf8(path: str) -> bool:
    """Whether a path is valid UTF-8: a name with another encoding's bytes holds surrogates here,
    which DALI and TensorBoard, taking UTF-8 names only, cannot open."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def partial_path(path: str) -> str:
    """The temporary name of `path` while it is being written: hidden, beside it, `.partial` at the end."""
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}{PARTIAL_SUFFIX}")


class AtomicWriter:
    """A file written under its temporary name: `commit()` moves it to `path`, `abort()` removes it.

    For writers that stream into a file over many calls (a shard); others use `atomic_file`.
    """

    def __init__(self, path: str, mode: str = "wb", fsync: bool = True):
        self.path, self.tmp_path, self.fsync = path, partial_path(path), fsync
        # open for as long as the writer streams; commit() or abort() closes it
        if "b" in mode:
            self.file: IO = open(self.tmp_path, mode)  # noqa: SIM115
        else:
            self.file = open(self.tmp_path, mode, encoding="utf-8", newline="\n")  # noqa: SIM115

    def commit(self) -> None:
        """Flush (and fsync) the file and rename it over `path`."""
        with self.file:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        """Close and remove the temporary file; `path` is left as it was."""
        try:
            self.file.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp_path)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces `path`, on an error it is removed.

    Args:
        path: the final path; its folder must exist.
        mode: "wb" or "w" (text, UTF-8, "\\n" line ends).
        fsync: flush the data to the disk before the rename (a crash then leaves the old or the new file).
    """
    w = AtomicWriter(path, mode, fsync)
    try:
        yield w.file
    except BaseException:
        w.abort()
        raise
    try:
        w.commit()
    except BaseException:
        w.abort()
        raise


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_file(path) as f:
        f.write(data)


def json_bytes(obj) -> bytes:
    """Indented, key-sorted JSON with a final newline: stable bytes for the same object."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json_atomic(path: str, obj) -> None:
    """`obj` as stable JSON (`json_bytes`) at `path`, atomically; creates the folder."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    write_atomic(path, json_bytes(obj))


def _lock_holder(st: os.stat_result) -> int | None:
    """PID holding a flock on the file with this stat, from /proc/locks (Linux), else None."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


class FolderLock:
    """An exclusive advisory lock on a folder, held by this process until `release()` or its end.

    The lock is `flock` on the folder itself: nothing is written, and the kernel drops it when the
    process dies (kill -9 included), so a stale lock cannot exist. A second holder is refused at
    once with a one-line error naming the process that holds it. Where the platform has no
    `flock` (Windows), no lock is taken.

    Args:
        path: an existing folder.
        what: how the folder is named in the error ("OUT", "RUN_DIR").
    """

    def __init__(self, path: str, what: str):
        self.path, self._fd = path, None
        try:
            import fcntl
        except ImportError:  # Windows
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(os.fstat(fd))
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise ImgprepError(
                f"{path}: {what} is in use by {who} (another imgprep run writing there); "
                f"wait for it to finish or choose another {what}"
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def file_signature(path: str) -> tuple[int, int, int]:
    """(size, mtime in ns, inode) of a file: what a cache of something derived from the file keys
    on, so that a file rewritten in place or replaced (renamed over) is read again."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino
