"""Shards checked against the manifest before their samples reach training.

The first time a process reads a shard it checks the shard's size and the CRC-32 of every
sample's `jpg` and `cls` bytes (`shards.sample_crc`) against the manifest (a dataset of format 1,
which has no per-sample checksums, is checked by the shard's sha256), and reads every JPEG's
header (~1 us): it must be the dataset's size x size. The header check covers a dataset forged
whole (manifest and shards agreeing), which could otherwise hand the decoder an image of any
size. A shard whose size differs (truncated, replaced) is always an error; a sample that fails
either check is an error naming the shard and the sample's key, or, with `on_corrupt="skip"`,
left out of training and counted.
Later reads of a shard whose size, mtime and inode are unchanged reuse the result.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading

from .errors import ImgprepError
from .fileio import file_signature
from .shards import CHECKED_COMPONENTS, index_path, read_dali_index, sample_crc, split_key

__all__ = ["ON_CORRUPT", "ShardChecker", "corrupt_sample_error", "jpeg_is", "left_out"]

ON_CORRUPT = ("error", "skip")  # what a loader does with a sample whose bytes changed after prepare


def corrupt_sample_error(shard: str, key: str | None) -> ImgprepError:
    what = f"sample {key}" if key is not None else "its samples"
    return ImgprepError(
        f"{shard}: {what} changed since `imgprep prepare` (its checksum differs from the manifest, or "
        "it is not a JPEG of the dataset's size); restore the shard or prepare again, or pass "
        "--on-corrupt skip to leave such samples out"
    )


def left_out(bad: dict[int, str], first: int, count: int, shard: str, on_corrupt: str) -> set[str]:
    """The keys of a shard's corrupt samples (`bad`: {position: key}) among the `count` read from
    `first`: an error naming the first with on_corrupt="error", else the samples to leave out."""
    mine = {key for pos, key in bad.items() if first <= pos < first + count}
    if mine and on_corrupt == "error":
        raise corrupt_sample_error(shard, min(mine))
    return mine


def jpeg_is(data: bytes, size: int) -> bool:
    """Whether `data` has the header of a size x size JPEG (read without decoding)."""
    import simplejpeg

    try:
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
    except ValueError:
        return False
    return h == w == size


def _bad_samples(path: str, record: dict, size: int) -> dict[int, str]:
    """{position in the shard: key} of its samples whose bytes differ from the manifest or whose
    JPEG is not size x size. A shard of format 1 (no per-sample checksums) that differs is an
    error: no sample can be singled out."""
    st = os.stat(path)
    if st.st_size != record["bytes"]:
        raise ImgprepError(
            f"{path}: {st.st_size:,} bytes, the manifest says {record['bytes']:,} (truncated or "
            "replaced); restore the shard or prepare again"
        )
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        crcs = record.get("sample_crc32")
        if crcs is None and hashlib.sha256(data).hexdigest() != record["sha256"]:  # format 1: the shard as a whole
            raise corrupt_sample_error(path, None)
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
            parts = {ext: data[off : off + n] for ext, off, n, _ in sample if ext in CHECKED_COMPONENTS}
            crc_ok = crcs is None or f"{sample_crc(parts):08x}" == crcs[8 * i : 8 * i + 8]
            if not (crc_ok and jpeg_is(parts.get("jpg", b""), size)):
                bad[i] = split_key(sample[0][3])[0]
        return bad


class ShardChecker:
    """Per process: which samples of each shard are corrupt, checked once per shard (thread-safe)."""

    def __init__(self, shards: list[str], records: list[dict], size: int):
        self.records = dict(zip(shards, records, strict=True))
        self.size = size  # the side of every stored JPEG
        self._done: dict[str, tuple[tuple, dict[int, str]]] = {}
        self._lock = threading.Lock()

    def bad_samples(self, path: str) -> dict[int, str]:
        """{position: key} of the corrupt samples of shard `path`; ImgprepError for a shard that is
        truncated or replaced (or, format 1, changed at all)."""
        sig = file_signature(path)
        with self._lock:
            cached = self._done.get(path)
        if cached is not None and cached[0] == sig:
            return cached[1]
        bad = _bad_samples(path, self.records[path], self.size)
        with self._lock:
            self._done[path] = (sig, bad)
        return bad
