"""Shards checked against the manifest before their samples reach training.

The first time a process reads a shard it checks the shard's size and the CRC-32 of every
sample's `jpg` and `cls` bytes (`shards.sample_crc`) against the manifest (a dataset of format 1,
which has no per-sample checksums, is checked by the shard's sha256). A shard whose size differs
(truncated, replaced) is always an error; a sample whose bytes changed is an error naming the
shard and the sample's key, or, with `on_corrupt="skip"`, left out of training and counted.
Later reads of a shard whose size, mtime and inode are unchanged reuse the result.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading

from .errors import ImgprepError
from .shards import CHECKED_COMPONENTS, index_path, read_dali_index, sample_crc, split_key

__all__ = ["ON_CORRUPT", "ShardChecker", "corrupt_sample_error"]

ON_CORRUPT = ("error", "skip")  # what a loader does with a sample whose bytes changed after prepare


def corrupt_sample_error(shard: str, key: str | None) -> ImgprepError:
    what = f"sample {key}" if key is not None else "its samples"
    return ImgprepError(
        f"{shard}: {what} changed since `imgprep prepare` (checksum differs from the manifest); "
        "restore the shard or prepare again, or pass --on-corrupt skip to leave such samples out"
    )


def _bad_samples(path: str, record: dict) -> dict[int, str]:
    """{position in the shard: key} of its samples whose bytes differ from the manifest. A shard of
    format 1 (no per-sample checksums) that differs is an error: no sample can be singled out."""
    st = os.stat(path)
    if st.st_size != record["bytes"]:
        raise ImgprepError(
            f"{path}: {st.st_size:,} bytes, the manifest says {record['bytes']:,} (truncated or "
            "replaced); restore the shard or prepare again"
        )
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        crcs = record.get("sample_crc32")
        if crcs is None:  # format 1: the shard as a whole
            if hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise corrupt_sample_error(path, None)
            return {}
        try:
            index = read_dali_index(index_path(path))
        except (OSError, ValueError) as exc:
            raise ImgprepError(f"{index_path(path)}: unreadable index ({exc}); prepare the dataset again") from None
        if len(index) != record["count"]:
            raise ImgprepError(
                f"{index_path(path)}: lists {len(index)} samples, the manifest says "
                f"{record['count']}; prepare the dataset again"
            )
        bad = {}
        for i, sample in enumerate(index):
            parts = {ext: data[off : off + size] for ext, off, size, _ in sample if ext in CHECKED_COMPONENTS}
            if f"{sample_crc(parts):08x}" != crcs[8 * i : 8 * i + 8]:
                bad[i] = split_key(sample[0][3])[0]
        return bad


class ShardChecker:
    """Per process: which samples of each shard are corrupt, checked once per shard (thread-safe)."""

    def __init__(self, shards: list[str], records: list[dict]):
        self.records = dict(zip(shards, records, strict=True))
        self._done: dict[str, tuple[tuple, dict[int, str]]] = {}
        self._lock = threading.Lock()

    def bad_samples(self, path: str) -> dict[int, str]:
        """{position: key} of the corrupt samples of shard `path`; ImgprepError for a shard that is
        truncated or replaced (or, format 1, changed at all)."""
        st = os.stat(path)
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            cached = self._done.get(path)
        if cached is not None and cached[0] == sig:
            return cached[1]
        bad = _bad_samples(path, self.records[path])
        with self._lock:
            self._done[path] = (sig, bad)
        return bad
