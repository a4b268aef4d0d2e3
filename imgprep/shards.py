"""WebDataset tar shards: a deterministic writer with DALI index files, and readers.

Every byte of a shard is a function of its samples: tar headers carry fixed owner, mode and time,
so the same input and seed give byte-identical shards on any machine, which is what resume and the
distributed executors rely on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .fileio import AtomicWriter, write_atomic

__all__ = [
    "DALI_INDEX_VERSION",
    "ShardWriter",
    "Fragment",
    "ShardInfo",
    "tar_header",
    "index_path",
    "dali_index_text",
    "read_dali_index",
    "iter_samples",
    "sha256_file",
    "split_key",
]

# DALI's `wds2idx` index format version, written on the first line of every `.idx` file.
DALI_INDEX_VERSION = "v1.2"

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar archives end on a whole record, as GNU tar and Python's tarfile write them


def _fixed_header() -> bytes:
    """The ustar header's fixed fields (mode 0444, owner 0:0, mtime 0, type 0, magic), with the
    name and size zero and the checksum field as spaces (how the checksum is computed)."""
    h = bytearray(_BLOCK)
    h[100:108] = b"0000444\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    return bytes(h)


_HEADER = _fixed_header()
_HEADER_SUM = sum(_HEADER)


def tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file: mode 0444, owner 0:0, mtime 0, no owner names.

    Byte-identical to what Python's tarfile writes for such a member; built from the fixed fields,
    with the checksum summed over the name and size only (summing the 512 bytes in Python cost 4.5
    of the 10 us a header took, at three members per image).
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"member name {name!r} longer than 100 bytes")
    if not 0 <= size < 8**11:
        raise ValueError(f"member {name!r}: {size} bytes do not fit a ustar header")
    field = b"%011o\0" % size
    check = b"%06o\0 " % (_HEADER_SUM + sum(raw) + sum(field))
    return b"".join((raw, _HEADER[len(raw) : 124], field, _HEADER[136:148], check, _HEADER[156:]))


def split_key(name: str) -> tuple[str, str]:
    """('KEY', 'ext') of a member name: the key runs to the first dot of the base name."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


_JOIN = 1 << 20  # bytes of small writes joined into one write and one hash update
_SYNC_EVERY = 8 << 20  # bytes written between background syncs of a shard


class _HashingFile:
    """File wrapper that hashes and counts what is written. `bytes` written are kept (by
    reference: they cannot change) and joined into one write and one hash update per _JOIN bytes:
    a sample's nine members and paddings, written one by one, cost ~25 us of calls and system
    calls. Anything else (a reused buffer's view) is written at once, after what was kept.

    Every _SYNC_EVERY bytes the data so far is synced to the disk by a thread of its own while
    the writer goes on, so that the fsync before the shard's rename finds little left to write:
    it blocked a worker ~90 ms for a 50 MB shard on a VM's disk, and can take seconds on a
    cluster file system, with the worker's core idle. `finish` waits for the last one."""

    def __init__(self, f, sync: bool = True):
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._sync_on = sync
        self._unsynced = 0
        self._sync: threading.Thread | None = None
        self._sync_error: OSError | None = None

    def write(self, b) -> int:
        n = len(b)
        if type(b) is bytes and n < _JOIN:
            self._kept.append(b)
            self._kept_bytes += n
            if self._kept_bytes >= _JOIN:
                self.flush()
        else:
            self.flush()
            self.f.write(b)
            self.sha.update(b)
            self._written(n)
        self.pos += n
        return n

    def flush(self) -> None:
        """Write and hash what was kept."""
        if self._kept:
            data = b"".join(self._kept)
            self._kept, self._kept_bytes = [], 0
            self.f.write(data)
            self.sha.update(data)
            self._written(len(data))

    def _written(self, n: int) -> None:
        self._unsynced += n
        if self._sync_on and self._unsynced >= _SYNC_EVERY and (self._sync is None or not self._sync.is_alive()):
            self.finish_syncs()
            self.f.flush()
            self._unsynced = 0
            self._sync = threading.Thread(
                target=self._run_sync, args=(self.f.fileno(),), daemon=True, name="imgprep-shard-sync"
            )
            self._sync.start()

    def _run_sync(self, fd: int) -> None:
        try:
            getattr(os, "fdatasync", os.fsync)(fd)
        except OSError as exc:  # raised in the writer by finish_syncs
            self._sync_error = exc

    def finish(self) -> None:
        """Write what was kept and wait for the background sync, raising its error; no sync is
        started for the last bytes (the caller's fsync before the rename writes them)."""
        self._sync_on = False
        self.flush()
        self.finish_syncs()

    def finish_syncs(self) -> None:
        """Wait for the background sync, if one runs, and raise its error."""
        if self._sync is not None:
            self._sync.join()
            self._sync = None
        if self._sync_error is not None:
            exc, self._sync_error = self._sync_error, None
            raise exc

    def tell(self) -> int:
        return self.pos


@dataclass
class ShardInfo:
    """What the manifest records of a finished shard."""

    path: str  # final path
    count: int  # samples
    bytes: int
    sha256: str
    sample_crc32: str  # 8 hex digits per sample, in shard order: `sample_crc` of each


# The components a loader reads; their bytes are what the per-sample checksum covers.
CHECKED_COMPONENTS = ("jpg", "cls")


def sample_crc(components: dict) -> int:
    """CRC-32 of a sample's checked components (jpg, then cls; missing ones as empty)."""
    crc = 0
    for ext in CHECKED_COMPONENTS:
        crc = zlib.crc32(components.get(ext, b""), crc)
    return crc


def index_path(shard: str) -> str:
    """The DALI index file of a shard: `NAME.idx` beside `NAME.tar`."""
    return shard[:-4] + ".idx" if shard.endswith(".tar") else shard + ".idx"


class Fragment:
    """Samples as tar members in memory, for a shard written elsewhere (`ShardWriter.write_fragment`):
    a worker builds the members of its piece of a shard, and the process writing the shard appends
    the bytes with one write, its offsets shifted, instead of building every member itself.

    `spill(path)` moves the bytes to a file, for a writer on the same machine: a fragment then
    travels between processes as its path, index and checksums (a few KB, not ~10 MB through a
    pipe, which blocked the worker for 70-90 ms per piece while a busy driver read it)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.pos = 0  # bytes so far
        self.index: list[list[tuple[str, int, int, str]]] = []  # offsets from the fragment's start
        self.crcs: list[str] = []
        self.path: str | None = None  # where the bytes are, once spilled

    @classmethod
    def of(cls, key: str, components: dict[str, bytes]) -> Fragment:
        """A fragment of one sample."""
        frag = cls()
        frag.add(key, components)
        return frag

    def _put(self, b: bytes) -> None:
        self.parts.append(b)
        self.pos += len(b)

    def add(self, key: str, components: dict[str, bytes]) -> None:
        """Add one sample: `components` maps extension (jpg, cls, json) to bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        entry = []
        for ext, data in components.items():
            name = f"{key}.{ext}"
            self._put(tar_header(name, len(data)))
            entry.append((ext, self.pos, len(data), name))  # the index points at the data
            self._put(data)
            if len(data) % _BLOCK:
                self._put(bytes(_BLOCK - len(data) % _BLOCK))
        self.index.append(entry)
        self.crcs.append(f"{sample_crc(components):08x}")

    def __len__(self) -> int:
        return len(self.index)

    def spill(self, path: str) -> None:
        """Write the bytes to a new file at `path` (one left there by a worker that died is replaced;
        a link there is not followed) and keep only its name."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in _joined(self.parts, _JOIN):  # a write per MiB, not a few per sample
                    f.write(chunk)
        except BaseException:  # a full disk: no half-written piece is left to fill it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        self.parts, self.path = [], path

    def __getstate__(self) -> dict:  # sent between processes as one bytes object, or the file's name
        data = {"data": b"".join(self.parts)} if self.path is None else {"path": self.path, "pos": self.pos}
        return {**data, "index": self.index, "crcs": self.crcs}

    def __setstate__(self, st: dict) -> None:
        self.index, self.crcs = st["index"], st["crcs"]
        if "path" in st:
            self.parts, self.path, self.pos = [], st["path"], st["pos"]
        else:
            self.parts, self.path, self.pos = [st["data"]], None, len(st["data"])


def _joined(parts: list[bytes], size: int) -> Iterator[bytes]:
    """`parts` in order, joined into pieces of about `size` bytes (a part may exceed it)."""
    group, n = [], 0
    for part in parts:
        group.append(part)
        n += len(part)
        if n >= size:
            yield b"".join(group)
            group, n = [], 0
    if group:
        yield b"".join(group)


_CHUNK = 1 << 20  # bytes a spilled fragment is read back in at a time


def _spilled_chunks(path: str, size: int) -> Iterator[memoryview]:
    """The `size` bytes of a spilled fragment's file, in chunks of one reused buffer (read, not
    mapped: a file cut short under a mapping would kill the process; here it is an OSError)."""
    buf = bytearray(min(_CHUNK, max(1, size)))
    left = size
    with open(path, "rb") as f:
        while left:
            n = f.readinto(memoryview(buf)[: min(left, len(buf))])
            if not n:
                break
            left -= n
            yield memoryview(buf)[:n]
        if left or f.read(1):
            raise OSError(f"{path}: not the {size} bytes its worker wrote")


class ShardWriter:
    """Write one shard under a temporary name; `close()` writes its DALI index and renames both.

    Args:
        path: final `.tar` path; the index goes beside it as `.idx`.
    """

    def __init__(self, path: str):
        self.path = path
        self.idx_path = index_path(path)
        self._out = AtomicWriter(path)
        self._h = _HashingFile(self._out.file, sync=self._out.fsync)
        self._crcs: list[str] = []
        self._index: list[list[tuple[str, int, int, str]]] = []
        self.count = 0

    def write(self, key: str, components: dict[str, bytes]) -> None:
        """Add one sample: `components` maps extension (jpg, cls, json) to bytes."""
        self.write_fragment(Fragment.of(key, components))

    def write_fragment(self, frag: Fragment) -> None:
        """Append a fragment's samples (the same bytes as writing them one by one)."""
        base = self._h.pos
        if frag.path is None:
            for part in frag.parts:
                self._h.write(part)
        else:
            for chunk in _spilled_chunks(frag.path, frag.pos):
                self._h.write(chunk)
        self._index += [[(e, base + o, n, name) for e, o, n, name in entry] for entry in frag.index]
        self._crcs += frag.crcs
        self.count += len(frag)

    def close(self) -> ShardInfo:
        """Finish the tar, write the index, and move both to their final names."""
        end = self._h.pos + 2 * _BLOCK  # two zero blocks, then zeros to the end of the record
        self._h.write(bytes(2 * _BLOCK + (-end) % _RECORD))
        self._h.finish()
        write_atomic(self.idx_path, dali_index_text(self._index).encode())
        self._out.commit()
        return ShardInfo(self.path, self.count, self._h.pos, self._h.sha.hexdigest(), "".join(self._crcs))

    def abort(self) -> None:
        """Drop the partial file."""
        with contextlib.suppress(OSError):
            self._h.finish_syncs()
        self._out.abort()


def dali_index_text(samples: list[list[tuple[str, int, int, str]]]) -> str:
    """Index text in the format of DALI's `wds2idx` (v1.2): a header, then per sample
    `ext offset size name` for each of its components, offsets pointing at the data."""
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{e} {o} {s} {n}" for e, o, s, n in sample) for sample in samples]
    return "\n".join(lines) + "\n"


def read_dali_index(path: str) -> list[list[tuple[str, int, int, str]]]:
    """Parse an index written by `dali_index_text` or `wds2idx`."""
    with open(path) as f:
        head = f.readline().split()
        if len(head) != 2 or head[0] != DALI_INDEX_VERSION:
            raise ValueError(f"{path}: not a DALI {DALI_INDEX_VERSION} index")
        out = []
        for line in f:
            t = line.split()
            out.append([(t[i], int(t[i + 1]), int(t[i + 2]), t[i + 3]) for i in range(0, len(t), 4)])
    if len(out) != int(head[1]):
        raise ValueError(f"{path}: header says {head[1]} samples, found {len(out)}")
    return out


def iter_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for each sample of a shard, in order; consecutive members share a key."""
    key, sample = None, {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isreg():
                continue
            k, ext = split_key(m.name)
            if k != key and sample:
                yield key, sample
                sample = {}
            key = k
            sample[ext] = tar.extractfile(m).read()
    if sample:
        yield key, sample


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
