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

from .constants import PAD_LABEL
from .errors import ImgprepError
from .fileio import file_signature
from .shards import index_path, read_dali_index, split_key

__all__ = [
    "ShardIndex",
    "IndexCache",
    "LocalShards",
    "CachedShards",
    "read_segment",
    "buffer_shuffle",
    "epoch_samples",
    "EpochPositions",
    "BatchReader",
]


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
        if len(table) and table.min() < 0:
            raise ImgprepError(f"{path}: a negative offset or size; prepare the dataset again")
        self.table, self.keys = table, keys
        self.rows = table.tolist()  # the same as Python ints: read per sample without numpy scalars

    @classmethod
    def of_shard(cls, shard: str) -> ShardIndex:
        return cls(index_path(shard))


class IndexCache:
    """Each shard's `ShardIndex`, parsed once and kept while its index file is unchanged
    (`fileio.file_signature`, as `integrity.ShardChecker` keeps its checks). A loader keeps one
    for all its epochs: parsing every index again at each epoch cost the feeding thread ~9 us an
    image (`benchmarks/bench_feed.py`), on the cores DALI decodes with. Pickled empty: a worker
    process parses its own."""

    def __init__(self):
        self._got: dict[str, tuple[tuple, ShardIndex]] = {}

    def get(self, shard: str) -> ShardIndex:
        path = index_path(shard)
        sig = file_signature(path)
        hit = self._got.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        index = ShardIndex(path)
        self._got[path] = (sig, index)
        return index

    def __getstate__(self) -> dict:
        return {"_got": {}}


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
    `skip` holds the keys to leave out per shard; `indexes`, the loader's parsed indexes (kept
    across its epochs). Picklable (DataLoader workers)."""

    skipped = 0  # counted by the check before the epoch

    def __init__(self, paths: list[str], skip: dict[int, set[str]], indexes: IndexCache | None = None):
        self.paths, self.skip = paths, skip
        self.indexes = indexes if indexes is not None else IndexCache()

    def path(self, s: int) -> str:
        return self.paths[s]

    def index(self, s: int) -> ShardIndex:
        return self.indexes.get(self.path(s))

    def left_out(self, s: int, first: int, count: int) -> set[str]:
        return self.skip.get(s, set())

    @contextlib.contextmanager
    def reading(self, order: list[int]):
        yield lambda k: None


class CachedShards(LocalShards):
    """The shards of a split at a URL, read through a `cache.ShardCache`: each checked as it
    arrives, fetched `ahead` of the reader. Picklable (each worker fetches its own part)."""

    def __init__(self, cache, on_corrupt: str, ahead: int, indexes: IndexCache | None = None):
        super().__init__([], {}, indexes)
        self.cache, self.on_corrupt, self.ahead = cache, on_corrupt, ahead
        self.skipped = 0  # samples left out so far by this copy (on_corrupt="skip")

    def path(self, s: int) -> str:
        return self.cache.path(s)

    def index(self, s: int) -> ShardIndex:
        return self.indexes.get(self.path(s))  # the cached entry's own: a refetched one is a new file

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


class _OpenShard:
    """A shard of the epoch whose samples are being read by position: its file stays open until
    its last sample has been read (`remaining`), so a cached shard replaced or evicted meanwhile
    (renamed over, unlinked) is still read whole from the file the index describes."""

    __slots__ = ("path", "fd", "size", "rows", "keys", "remaining")

    def __init__(self, path: str, index: ShardIndex, count: int):
        self.path, self.rows, self.keys, self.remaining = path, index.rows, index.keys, count
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size  # no buffer is sized by a sample that cannot be in the file

    def done_one(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class EpochPositions:
    """Where each sample of `segments` lies, in order, without its bytes: (shard, sample, left_out)
    tuples for the shuffle buffer, read later by `BatchReader`. A buffer of positions holds a few
    hundred kilobytes where one of samples held the samples (~140 MB at 4096 samples), so nothing
    churns through the heap; the price is a read per sample, out of file order, which the page
    cache serves. Use as a context manager: files still open at the end (an epoch stopped early,
    `drop` samples never read) are closed on exit."""

    def __init__(self, segments: list[tuple[int, int, int]], source: LocalShards):
        self.segments, self.source = segments, source
        self._open: list[_OpenShard] = []

    def __iter__(self) -> Iterator[tuple[_OpenShard, int, bool]]:
        source = self.source
        with source.reading([s for s, _, _ in self.segments]) as at:
            for k, (s, first, count) in enumerate(self.segments):
                at(k)
                left = source.left_out(s, first, count)
                index = source.index(s)
                sh = _OpenShard(source.path(s), index, count)
                self._open = [o for o in self._open if o.fd >= 0] + [sh]
                if left:
                    keys = index.keys
                    for i in range(first, first + count):
                        yield sh, i, keys[i] in left
                else:
                    for i in range(first, first + count):
                        yield sh, i, False

    def __enter__(self) -> EpochPositions:
        return self

    def __exit__(self, *exc) -> None:
        for sh in self._open:
            sh.close()
        self._open = []


_GAP = 4096  # bytes between a sample's cls and jpg members read in the same call (a tar header: 512)
_MAX_LABEL = 32  # bytes of a cls member
_ROW_ALIGN = 64


class BatchReader:
    """Reads a batch of sample positions into one of a ring of `slots` reused uint8 buffers,
    straight from the files (`os.preadv`: no bytes object per sample, no fresh memory once the
    ring is grown).

    With `dense` the JPEGs lie in rows of one (B, L) array, L the batch's longest JPEG rounded up,
    zeros after each JPEG's end (its decoder stops at the JPEG's end marker): DALI takes such a
    batch as one tensor, where a list of arrays costs a conversion per sample (~5 us each). A
    batch whose longest JPEG would make that array over twice the batch's bytes (an odd dataset)
    is fed as a list of views of one packed buffer instead, as it is without `dense` (the GPU's
    decoders get exact lengths). A buffer is reused `slots` batches later: its batch must have
    been run by then (DALI reads fed arrays in place)."""

    def __init__(self, batch: int, slots: int, dense: bool):
        self.batch, self.dense = batch, dense
        self._bufs = [np.zeros(0, np.uint8) for _ in range(max(2, slots))]
        self._next = 0
        self._scratch = bytearray(_GAP + _MAX_LABEL)
        self._prev = None  # the last batch's last JPEG (buffer, offset, length): the next stand-in

    def new_epoch(self) -> None:
        self._prev = None

    def read(self, items: list[tuple[_OpenShard, int, bool]], first_good) -> tuple[object, np.ndarray]:
        """The feed of one batch: (jpgs, labels int32 (B,)) for `items` (at most B positions; the
        rest of the batch repeats the last one). A left-out item gets the previous good sample's
        JPEG (`first_good()` gives it where none came before) and PAD_LABEL; `shard.done_one` is
        called for every item read."""
        b, n = self.batch, len(items)
        standin = None  # the first good sample's JPEG, where a left-out one comes before any good one
        last = self._prev[2] if self._prev is not None else None
        sizes = []  # of each item's JPEG, or of its stand-in's
        for sh, i, left_out in items:
            if not left_out:
                jo, last, co, cs = sh.rows[i]
                if max(jo + last, co + cs) > sh.size:
                    raise ImgprepError(f"{sh.path}: ends inside sample {sh.keys[i]}; run `imgprep verify`")
            elif last is None:
                standin = first_good()
                last = len(standin)
            sizes.append(last)
        stride = -(-max(sizes) // _ROW_ALIGN) * _ROW_ALIGN
        dense = self.dense and stride * n <= 2 * sum(sizes) + _ROW_ALIGN * n
        if dense:
            offsets, need = [k * stride for k in range(b)], stride * b
        else:
            offsets, need = [], 0
            for z in sizes:
                offsets.append(need)
                need += -(-z // _ROW_ALIGN) * _ROW_ALIGN
        buf = self._bufs[self._next]
        if buf.size < need:
            buf = self._bufs[self._next] = np.empty(need + need // 4 + 4096, np.uint8)
        self._next = (self._next + 1) % len(self._bufs)
        mv, scratch = memoryview(buf), memoryview(self._scratch)
        labels = np.empty(b, np.int32)
        prev = self._prev  # (buffer, offset, size) of the last good JPEG read (or its copy)
        for k, (sh, i, left_out) in enumerate(items):
            at, size = offsets[k], sizes[k]
            if not left_out:
                labels[k] = _read_sample(sh, i, mv[at : at + size], scratch)
            else:
                if prev is None:
                    buf[at : at + size] = np.frombuffer(standin, np.uint8)
                else:
                    buf[at : at + size] = prev[0][prev[1] : prev[1] + size]
                labels[k] = PAD_LABEL
                sh.done_one()
            if dense:
                buf[at + size : at + stride] = 0
            prev = (buf, at, size)
        self._prev = prev
        if dense:
            rows = buf[: stride * b].reshape(b, stride)
            if n < b:
                rows[n:] = rows[n - 1]
            jpgs = rows
        else:
            jpgs = [buf[offsets[k] : offsets[k] + sizes[k]] for k in range(n)]
            jpgs += [jpgs[-1]] * (b - n)
        if n < b:
            labels[n:] = labels[n - 1]
        return jpgs, labels


def _read_sample(sh: _OpenShard, i: int, into: memoryview, scratch: memoryview) -> int:
    """Read sample `i` of `sh`: its jpg into `into` (its exact size), its label returned; one
    `preadv` where the members are neighbours (a tar header apart), two reads otherwise."""
    jo, js, co, cs = sh.rows[i]
    if cs > _MAX_LABEL:
        raise ImgprepError(f"{sh.path}: sample {sh.keys[i]} has a label that is not a number")
    label = scratch[:cs]
    if co + cs <= jo and jo - co - cs <= _GAP:
        want, got = jo + js - co, os.preadv(sh.fd, [label, scratch[cs : jo - co], into], co)
    elif jo + js <= co and co - jo - js <= _GAP:
        want, got = co + cs - jo, os.preadv(sh.fd, [into, scratch[cs : cs + co - jo - js], label], jo)
    else:
        want, got = js + cs, os.preadv(sh.fd, [into], jo) + os.preadv(sh.fd, [label], co)
    if got != want:
        raise ImgprepError(f"{sh.path}: ends inside sample {sh.keys[i]}; run `imgprep verify`")
    cls = bytes(label)
    if not cls.isdigit():
        raise ImgprepError(f"{sh.path}: sample {sh.keys[i]} has a label that is not a number")
    sh.done_one()
    return int(cls)
