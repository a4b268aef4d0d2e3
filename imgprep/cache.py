"""A local, bounded, verified cache of the shards of a dataset at a URL.

Layout of the cache folder (default `$XDG_CACHE_HOME/imgprep/shards`, else `~/.cache/...`, else
`$TMPDIR/imgprep-<uid>/shards` where there is no writable home):
  KEY.tar, KEY.idx    a shard and its index; KEY = sha256 of the shard's full URL and its sha256
                      in the manifest (never its base name: train/ and val/ shards, or two
                      datasets, never share an entry)
  KEY.json            what was fetched: URL, size, ETag/version, the samples that failed the
                      check; written last, so an entry without it is unfinished and ignored
  KEY.lock            flock held by the one process fetching KEY: others on the node wait for it
  pins/HOST-PID       the keys a live process is reading or has fetched ahead (never evicted)
  .lock               flock held while deciding what to evict
Files are written under temporary names and renamed into place: a crash leaves no half-written
entry, and temporary files of processes that no longer run are removed.

A shard is checked on arrival, before any decoder sees it: its size against the manifest, the
CRC-32 of every sample and every JPEG's header (`integrity`). A shard that fails is fetched once
more; what still fails is recorded, and the loader stops naming the URL and the sample (or leaves
the samples out with on_corrupt="skip").
Eviction: least recently used first, never a pinned entry, before each fetch that would pass the
limit; the cache holds at most its limit plus one shard.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import threading
import time

from .errors import ImgprepError
from .fileio import write_atomic
from .remote import RemoteError, Store
from .shards import index_path

__all__ = ["ShardCache", "default_cache_dir", "home_folder", "imgprep_home", "private_folder"]

_POLL = 0.05
PREFETCH_CONNECTIONS = 2  # shards fetched at once per reader (each on its own connection)


def imgprep_home() -> str:
    """imgprep's per-user folder (shard cache, staging folders, scans): in XDG_CACHE_HOME or
    ~/.cache, or (no writable home: containers, clusters) `imgprep-UID` in TMPDIR."""
    for base in (os.environ.get("XDG_CACHE_HOME"), os.path.join(os.path.expanduser("~"), ".cache")):
        if base and os.path.isabs(base):
            parent = base if os.path.isdir(base) else os.path.dirname(base)
            if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
                return os.path.join(base, "imgprep")
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"imgprep-{os.getuid()}")


def default_cache_dir() -> str:
    """The per-user shard cache folder (`imgprep_home()/shards`)."""
    return os.path.join(imgprep_home(), "shards")


def private_folder(path: str, what: str, flag: str) -> str:
    """Make `path` (mode 0700) and check it is this user's and writable by no one else: what
    imgprep keeps there is read back and trusted; in a shared TMPDIR another user could otherwise
    have made it first. One line naming `flag` (the setting to change) where it is not."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ImgprepError(f"{path}: cannot create {what} ({exc.strerror or exc}); set {flag}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ImgprepError(
            f"{path}: {what} is not private (a link, owned by another user, or group- or world-writable); "
            f"set {flag} to a folder of your own"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ImgprepError(f"{path}: {what} is not writable; set {flag}")
    return path


def home_folder(*parts: str, what: str, flag: str = "XDG_CACHE_HOME") -> str:
    """imgprep_home()/parts..., every level from imgprep's own folder down made and checked
    private (`private_folder`): a folder inside one another user controls is not private."""
    path = imgprep_home()
    private_folder(path, what, flag)
    for part in parts:
        path = private_folder(os.path.join(path, part), what, flag)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Flock:
    """An exclusive flock on `path`, waited for up to `timeout` seconds (None: forever)."""

    def __init__(self, path: str, timeout: float | None, what: str):
        self.path, self.timeout, self.what = path, timeout, what

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                os.close(self.fd)
                raise ImgprepError(
                    f"{self.what}: another process has been fetching it for {self.timeout:.0f} s; "
                    "check that process (or the network), or raise --remote-timeout"
                )
            time.sleep(_POLL)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class ShardCache:
    """The shards of one split of a dataset at a URL, fetched on demand into `folder`.

    Args:
        store: the dataset's objects (`remote.Store` of its URL).
        keys: each shard's key in the store ("train/train-000000.tar"), manifest order.
        records: their manifest records (bytes, sha256, count, sample_crc32).
        size: the stored image side (the JPEG header check).
        folder: the cache folder; limit: bytes it may hold (plus one shard).
    Picklable: DataLoader worker processes read through their own copy (sharing the folder).
    """

    def __init__(self, store: Store, keys: list[str], records: list[dict], size: int, folder: str, limit: int):
        self.store, self.keys, self.records, self.size = store, keys, records, size
        self.folder, self.limit = folder, limit
        self._make_folder()
        self._pinned: set[str] = set()
        self._lock = threading.Lock()
        self._checked: dict[int, str] = {}  # shard -> ETag seen by this process's HEAD (one per shard and epoch)
        self._heads: dict[int, threading.Lock] = {}
        self.fetched = self.refetched = 0  # counts of this process's downloads and second tries

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_lock")
        d["_pinned"], d["_checked"], d["_heads"] = set(), {}, {}
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def _make_folder(self) -> None:
        # what lies in it is handed to the decoder after one check; a folder others can write to
        # could be changed between the check and the read
        if self.folder == default_cache_dir():  # in a shared TMPDIR the folder above it is ours too
            home_folder(os.path.basename(self.folder), what="the cache folder", flag="--cache-dir")
        else:
            private_folder(self.folder, "the cache folder", "--cache-dir")
        private_folder(os.path.join(self.folder, "pins"), "the cache folder", "--cache-dir")

    def key(self, s: int) -> str:
        url = self.store.url_of(self.keys[s])
        return hashlib.sha256(f"{url}\0{self.records[s]['sha256']}".encode()).hexdigest()[:32]

    def _file(self, s: int, ext: str) -> str:
        return os.path.join(self.folder, f"{self.key(s)}.{ext}")

    def url(self, s: int) -> str:
        return self.store.url_of(self.keys[s])

    # -- reading ----------------------------------------------------------------------------------

    def path(self, s: int) -> str:
        """The local path of shard `s`, fetched and checked if it is not cached (blocking)."""
        self.ensure(s)
        return self._file(s, "tar")

    def bad(self, s: int) -> dict[int, str]:
        """{position: key} of the samples of shard `s` that failed the check (after a refetch)."""
        meta = self.ensure(s)
        return {int(k): v for k, v in meta["bad"].items()}

    def meta(self, s: int) -> dict | None:
        try:
            with open(self._file(s, "json"), encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or m.get("url") != self.url(s) or m.get("bytes") != self.records[s]["bytes"]:
            return None
        if not isinstance(m.get("bad"), dict) or not os.path.isfile(self._file(s, "tar")):
            return None
        if os.path.getsize(self._file(s, "tar")) != self.records[s]["bytes"]:
            return None
        return m

    def _fresh(self, s: int, meta: dict) -> bool:
        """Whether the cached entry is the object now in the store: its ETag, asked once per shard
        and epoch (`new_epoch`)."""
        with self._lock:
            one = self._heads.setdefault(s, threading.Lock())  # the reader and the prefetcher ask once
        with one:
            with self._lock:
                etag = self._checked.get(s)
            if etag is None:
                info = self.store.head(self.keys[s])
                etag = info.etag
                if info.size != self.records[s]["bytes"]:
                    raise RemoteError(
                        f"{self.url(s)}: {info.size:,} bytes, the manifest says {self.records[s]['bytes']:,} "
                        "(replaced or truncated in the bucket); upload the dataset again"
                    )
                with self._lock:
                    self._checked[s] = etag
        return meta.get("etag") == etag

    def new_epoch(self) -> None:
        """Ask the store again whether cached entries are current (once per shard)."""
        with self._lock:
            self._checked.clear()

    def ensure(self, s: int) -> dict:
        """The entry of shard `s`, fetched (and checked) unless a current one is cached."""
        if self.records[s]["bytes"] > self.limit:
            raise ImgprepError(
                f"{self.url(s)}: {self.records[s]['bytes'] / 1e9:.2f} GB, more than --cache-limit "
                f"({self.limit / 1e9:.2f} GB); raise --cache-limit"
            )
        self.pin([s], add=True)
        meta = self.meta(s)
        if meta is not None and self._fresh(s, meta):
            os.utime(self._file(s, "json"))  # recently used
            return meta
        wait = self.store.retry.attempts * (
            self.store.retry.timeout * 2 + self.records[s]["bytes"] / self.store.retry.min_rate
        )
        with _Flock(self._file(s, "lock"), wait, self.url(s)):
            meta = self.meta(s)  # fetched by another process meanwhile?
            if meta is not None and self._fresh(s, meta):
                return meta
            self._make_room(self.records[s]["bytes"], replacing=self.key(s))
            return self._fetch(s)

    def _fetch(self, s: int) -> dict:
        from .integrity import _bad_samples

        rec = self.records[s]
        tmp = os.path.join(self.folder, f"{self.key(s)}.tmp-{os.getpid()}-{threading.get_ident()}")
        tar, idx = tmp + ".tar", tmp + ".idx"
        try:
            bad, info = None, None
            for attempt in range(2):  # a shard that fails the check is fetched once more
                with open(idx, "wb") as f:  # bounded: a line of under 256 bytes per component
                    self.store.get_to_file(index_path(self.keys[s]), f, limit=4096 + 1024 * rec["count"])
                with open(tar, "wb") as f:
                    info = self.store.get_to_file(self.keys[s], f, expect_size=rec["bytes"])
                self.fetched += 1
                try:
                    bad = _bad_samples(tar, rec, self.size)
                except ImgprepError as exc:  # truncated index, a format 1 shard that differs
                    bad, why = None, str(exc).split(": ", 1)[-1]
                else:
                    why = ""
                if bad == {}:
                    break
                if attempt == 0:
                    self.refetched += 1
            if bad is None:
                raise ImgprepError(f"{self.url(s)}: {why}")
            os.replace(idx, self._file(s, "idx"))
            os.replace(tar, self._file(s, "tar"))
            meta = {
                "url": self.url(s),
                "bytes": rec["bytes"],
                "etag": info.etag,
                "bad": {str(k): v for k, v in bad.items()},
            }
            write_atomic(self._file(s, "json"), json.dumps(meta).encode())
            with self._lock:
                self._checked[s] = info.etag
            return meta
        finally:
            for p in (tar, idx):
                if os.path.exists(p):
                    os.unlink(p)

    # -- pins and eviction ------------------------------------------------------------------------

    def _pin_file(self) -> str:
        return os.path.join(self.folder, "pins", f"{socket.gethostname()}-{os.getpid()}")

    def pin(self, shards, add: bool = False) -> None:
        """Mark `shards` (or add them) as in use by this process: eviction leaves them alone."""
        keys = {self.key(s) for s in shards}
        with self._lock:
            new = (self._pinned | keys) if add else keys
            if new == self._pinned:
                return
            self._pinned = new
            write_atomic(self._pin_file(), "\n".join(sorted(new)).encode())

    def unpin_all(self) -> None:
        with self._lock:
            self._pinned = set()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._pin_file())

    def _pinned_everywhere(self) -> set[str]:
        """Keys pinned by live processes on this node (pin files of dead ones are removed)."""
        out = set()
        d = os.path.join(self.folder, "pins")
        host = socket.gethostname()
        for name in os.listdir(d):
            h, _, pid = name.rpartition("-")
            if h == host and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(d, name))
                continue
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    out.update(f.read().split())
            except OSError:
                pass
        return out

    def _entries(self) -> list[tuple[float, str, int]]:
        """(last use, key, bytes of its files) of every entry, and the leftovers of dead processes removed."""
        out = []
        for name in os.listdir(self.folder):
            full = os.path.join(self.folder, name)
            if ".tmp-" in name:  # a fetch in progress, or one killed: removed when its process is gone
                pid = name.split(".tmp-", 1)[1].split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(full)
                continue
            if name.endswith(".json"):
                key = name[:-5]
                try:
                    used = os.path.getmtime(full)
                    n = sum(os.path.getsize(os.path.join(self.folder, f"{key}.{e}")) for e in ("tar", "idx"))
                except OSError:
                    continue
                out.append((used, key, n))
        return out

    def used(self) -> int:
        """Bytes the cache's entries take."""
        return sum(n for _, _, n in self._entries())

    def _make_room(self, need: int, replacing: str = "") -> None:
        """Evict least recently used entries, never pinned ones, until `need` more bytes fit. The
        entry `replacing` (a stale one being fetched anew) does not count: its files are replaced,
        so a cache sized to the dataset never evicts a good shard to refetch a changed one."""
        with _Flock(os.path.join(self.folder, ".lock"), None, self.folder):
            entries = sorted(e for e in self._entries() if e[1] != replacing)
            total = sum(n for _, _, n in entries)
            if total + need <= self.limit:
                return
            pinned = self._pinned_everywhere()
            for _, key, n in entries:
                if total + need <= self.limit:
                    break
                if key in pinned:
                    continue
                for e in ("json", "tar", "idx"):  # the marker first (a half-removed entry is no entry); the
                    # lock file stays: a process waiting on it must not lock a new file of the same name
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.folder, f"{key}.{e}"))
                total -= n


class Prefetcher:
    """Fetches the shards a reader will read next, `ahead` of it, on `parallel` threads (one
    connection each: a store serves each connection at a bounded rate, and S3's guidance is
    parallel requests); `at(k)` tells it the reader has reached order[k]. Its failures are left
    for the reader's own fetch of the same shard to report (in the reader's context); it never
    blocks the reader."""

    def __init__(self, cache: ShardCache, order: list[int], ahead: int, parallel: int = PREFETCH_CONNECTIONS):
        self.cache, self.order, self.ahead = cache, order, ahead
        self._pos, self._stop = 0, False
        self._taken: set[int] = set()  # shards a thread has started on
        self._cv = threading.Condition()
        n = max(1, min(parallel, ahead + 1))
        self._threads = [threading.Thread(target=self._run, name="imgprep-prefetch", daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()

    def at(self, k: int) -> None:
        with self._cv:
            self._pos = k
            self._cv.notify_all()
        self.cache.pin(self.order[k : k + 1 + self.ahead])  # the window: never evicted while in it

    def _next(self) -> int | None:
        """The first shard of the window no thread has started on (None: stop)."""
        with self._cv:
            while True:
                if self._stop:
                    return None
                todo = [s for s in self.order[self._pos : self._pos + 1 + self.ahead] if s not in self._taken]
                if todo:
                    self._taken.add(todo[0])
                    return todo[0]
                self._cv.wait()

    def _run(self) -> None:
        while (s := self._next()) is not None:
            try:
                self.cache.ensure(s)
            except Exception:  # noqa: BLE001  the reader's own ensure() reports it
                return

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()
        self.cache.unpin_all()
