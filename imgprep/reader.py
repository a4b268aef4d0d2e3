"""One rank's samples of one epoch, read in Python from the shards through their DALI index files.

The DALI backend is fed from here (`fn.external_source`) rather than by DALI's own webdataset
reader: that reader takes its files and their order when the pipeline is built, so every training
epoch (a new shard order) needed a new pipeline, and every file had to be on disk before the first
batch. Read here, the pipeline is built once per loader, a shard only has to be readable when the
stream reaches it (the place where a shard cache for datasets at a URL plugs in: `shard_path`),
and the random draws are made per epoch from (seed, epoch, rank), so an epoch's batches do not
depend on the epochs before it (a resumed run sees the batches an uninterrupted one sees).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import numpy as np

from .errors import ImgprepError
from .shards import index_path, read_dali_index, split_key

__all__ = ["ShardIndex", "LocalShards", "CachedShards", "read_segment", "buffer_shuffle", "epoch_samples"]


class ShardIndex:
    """Where each sample's `jpg` and `cls` members lie in one shard: int64 (n, 4) of jpg offset,
    jpg size, cls offset, cls size, and the sample keys, from the shard's DALI index."""

    def __init__(self, path: str):
        entries = read_dali_index(path)
        table = np.zeros((len(entries), 4), np.int64)
        keys = []
        for i, sample in enumerate(entries):
            by_ext = {e[0]: e for e in sample}
            if "jpg" not in by_ext or "cls" not in by_ext:
                raise ImgprepError(f"{path}: sample {i} has no jpg or cls member; run `imgprep verify`")
            j, c = by_ext["jpg"], by_ext["cls"]
            table[i] = (j[1], j[2], c[1], c[2])
            keys.append(split_key(j[3])[0])
        self.table, self.keys = table, keys
        self.rows = table.tolist()  # the same as Python ints: read per sample without numpy scalars

    @classmethod
    def of_shard(cls, shard: str) -> ShardIndex:
        return cls(index_path(shard))


READ_CHUNK = 4 << 20  # bytes one read of a segment may span (several neighbouring samples)


def read_segment(path: str, index: ShardIndex, first: int, count: int) -> Iterator[tuple[str, bytes, int]]:
    """(key, jpg bytes, label) of samples first .. first+count-1 of the shard at `path`: each read
    spans whole samples (their jpg and cls members, neighbours in the tar), as many consecutive
    ones as fit in READ_CHUNK bytes (one at least)."""
    rows, end = index.rows, first + count
    fd = os.open(path, os.O_RDONLY)
    try:
        i = first
        while i < end:
            lo = min(rows[i][0], rows[i][2])
            j, hi = i, lo
            while j < end:
                jo, js, co, cs = rows[j]
                top = max(jo + js, co + cs)
                if j > i and top - lo > READ_CHUNK:
                    break
                hi, j = max(hi, top), j + 1
            buf = os.pread(fd, hi - lo, lo)
            for k in range(i, j):
                jo, js, co, cs = rows[k]
                if max(jo + js, co + cs) - lo > len(buf):
                    raise ImgprepError(f"{path}: ends inside sample {index.keys[k]}; run `imgprep verify`")
                cls = buf[co - lo : co - lo + cs]
                if not cls.isdigit():
                    raise ImgprepError(f"{path}: sample {index.keys[k]} has a label that is not a number")
                yield index.keys[k], buf[jo - lo : jo - lo + js], int(cls)
            i = j
    finally:
        os.close(fd)


def buffer_shuffle(it, size: int, rng: np.random.Generator, initial: int | None = None):
    """Shuffle a stream through a buffer of up to `size` items (webdataset's scheme): once it holds
    `initial` items (default `size`), each item taken in replaces a random one of the buffer, which
    is yielded, and the buffer grows by one more item per item yielded until it holds `size`; the
    rest drain in random order. A small `initial` gives the first batch after a few samples rather
    than a whole buffer's (over a network: one shard, not four), mixing fully soon after."""
    initial = size if initial is None else max(1, min(initial, size))
    it = iter(it)
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) < size:  # grow: one more in for each one out
            buf += itertools.islice(it, 1)
        if len(buf) < initial:
            continue
        k = int(rng.integers(0, len(buf)))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class LocalShards:
    """The shards of a split on a local disk, checked before the epoch (`BaseLoader.check_shards`):
    `skip` holds the keys to leave out per shard. Picklable (DataLoader workers)."""

    skipped = 0  # counted by the check before the epoch

    def __init__(self, paths: list[str], skip: dict[int, set[str]]):
        self.paths, self.skip = paths, skip
        self._indexes: dict[int, ShardIndex] = {}

    def path(self, s: int) -> str:
        return self.paths[s]

    def index(self, s: int) -> ShardIndex:
        if s not in self._indexes:
            self._indexes[s] = ShardIndex.of_shard(self.path(s))
        return self._indexes[s]

    def left_out(self, s: int, first: int, count: int) -> set[str]:
        return self.skip.get(s, set())

    @contextlib.contextmanager
    def reading(self, order: list[int]):
        yield lambda k: None


class CachedShards(LocalShards):
    """The shards of a split at a URL, read through a `cache.ShardCache`: each checked as it
    arrives, fetched `ahead` of the reader. Picklable (each worker fetches its own part)."""

    def __init__(self, cache, on_corrupt: str, ahead: int):
        super().__init__([], {})
        self.cache, self.on_corrupt, self.ahead = cache, on_corrupt, ahead
        self.skipped = 0  # samples left out so far by this copy (on_corrupt="skip")

    def path(self, s: int) -> str:
        return self.cache.path(s)

    def index(self, s: int) -> ShardIndex:
        return ShardIndex.of_shard(self.path(s))  # the cached entry's own (it may have been refetched)

    def left_out(self, s: int, first: int, count: int) -> set[str]:
        from .integrity import left_out

        mine = left_out(self.cache.bad(s), first, count, self.cache.url(s), self.on_corrupt)
        self.skipped += len(mine)
        return mine

    @contextlib.contextmanager
    def reading(self, order: list[int]):
        from .cache import Prefetcher

        p = Prefetcher(self.cache, order, self.ahead)
        try:
            yield p.at
        finally:
            p.close()


def epoch_samples(segments: list[tuple[int, int, int]], source: LocalShards) -> Iterator[tuple[str, bytes, int, bool]]:
    """(key, jpg, label, left_out) of each sample of `segments` in order, read from `source`;
    `left_out` marks samples changed since prepare (on_corrupt="skip")."""
    with source.reading([s for s, _, _ in segments]) as at:
        for k, (s, first, count) in enumerate(segments):
            at(k)
            keys = source.left_out(s, first, count)
            for key, jpg, label in read_segment(source.path(s), source.index(s), first, count):
                yield key, jpg, label, key in keys
