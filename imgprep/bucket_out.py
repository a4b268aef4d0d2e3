"""`imgprep prepare SRC s3://bucket/prefix`: OUT in object storage.

The run is the local one (`prepare._prepare_into`) with three differences:
  - each unit writes its shard and index in a private temporary folder of the process that made
    them (a pool worker or a Ray task on any node: nothing of the driver's disk is needed), puts
    both straight to the bucket, checks them there (size, and the ETag S3 makes the MD5 of a
    single-part upload), and deletes its local copy;
  - the resume state (`.imgprep/config.json` and `state.npz`, the finished units' records and
    statistics sums) is kept in a local staging folder and copied to the bucket as it grows, so
    the same command on another machine resumes too; recorded shards are checked in the bucket
    (HEAD: size and MD5) before they are kept;
  - one run writes a prefix at a time: a lock object (`.imgprep/lock`, this run's id, host and
    staging folder) is created with a conditional write (If-None-Match: *) before anything else
    is written, renewed every RENEW_S seconds (If-Match: its own ETag), and checked again before
    the manifest. A second run finding the lock waits LOCK_WAIT_S seconds: a lock renewed meanwhile
    belongs to a live run (one line, the run is refused); one left unchanged is a dead run's and
    is taken over (If-Match: its ETag, so of two contenders one wins). A lock of this machine's
    staging folder is taken over at once: the folder's own lock proves that run is gone;
  - the statistics and rejects are put when every unit is done, and the manifest last, while the
    lock is still this run's. The prefix's `.imgprep/` is removed at the end.
What holds: a prefix with a manifest is complete, its objects are byte-identical to a local run's,
and of two runs into one prefix one writes and the other stops with one line, on any store with
S3's conditional writes (AWS S3 since 2024, SeaweedFS, MinIO). On a store that ignores them, the
lock is only a run id: the later run wins and the earlier one stops before its manifest, but both
may have written shards meanwhile (the survivor's resume checks and redoes what does not match).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid

from .dataset import MANIFEST, MEAN_FILE, REJECTS, STATS_DIR, STATS_FILE
from .errors import ImgprepError
from .remote import RemoteError, Store
from .shards import index_path

__all__ = ["BucketOut", "upload_shard"]

STATE_KEYS = (".imgprep/config.json", ".imgprep/state.npz")
LOCK = ".imgprep/lock"
RENEW_S = 10.0  # the lock is rewritten this often while a run holds it
LOCK_WAIT_S = 25.0  # how long a lock must stay unchanged to be a dead run's (over two renewals)


def upload_shard(url: str, tmp_dir: str, rel: str, idx_rel: str, aws_env: dict) -> str:
    """Put a unit's shard and index (written under `tmp_dir`) at `url` with the driver's AWS
    settings over this process's own; returns the shard's ETag as the store gives it (its MD5,
    or for a multipart upload the MD5 of its parts' MD5s and their count)."""
    store = Store(url, env={**os.environ, **aws_env})
    with open(os.path.join(tmp_dir, idx_rel), "rb") as f:
        store.put_checked(idx_rel, f.read())
    return store.put_file_checked(rel, os.path.join(tmp_dir, rel))  # in parts where large


class BucketOut:
    """OUT at an s3:// URL: its store, the local staging folder and the run id."""

    def __init__(self, url: str):
        if not url.startswith("s3://"):
            raise ImgprepError(f"{url}: prepare writes to s3:// URLs only (an HTTP server cannot be written)")
        self.url = url.rstrip("/")
        self.store = Store(self.url)
        self.run_id = uuid.uuid4().hex
        self._etag: str | None = None  # of the lock, while this run holds it
        self._lost = threading.Event()  # set when another run has taken the lock over
        from .cache import imgprep_home

        self._stage_key = hashlib.sha256(self.url.encode()).hexdigest()[:24]
        self.stage = os.path.join(imgprep_home(), "stage", self._stage_key)

    def make_stage(self) -> None:
        """The staging folder, and the folders above it up to imgprep's own, private to this user."""
        from .cache import home_folder

        home_folder("stage", self._stage_key, what="imgprep's staging folder")

    # -- what the prefix holds --------------------------------------------------------------------

    def read(self, rel: str) -> bytes | None:
        """The object at `rel` under the prefix (at most 512 MiB: a manifest or a settings file),
        or None where there is none."""
        return self.store.get_or_none(rel, limit=1 << 29)

    def is_empty(self) -> bool:
        """Whether the prefix holds no object (a bucket that does not exist yet counts as empty: the
        first put creates it where the store does, else says so)."""
        try:
            return not [k for k, _ in self.store.list("") if k != LOCK]
        except RemoteError as exc:
            if exc.status != 404:
                raise
            return True

    def pull_state(self) -> None:
        """Copy the bucket's resume state into the staging folder where this machine has none."""
        local = [os.path.join(self.stage, k) for k in STATE_KEYS]
        if all(os.path.exists(p) for p in local):
            return
        for key, path in zip(STATE_KEYS, local, strict=True):
            data = self.store.get_or_none(key, limit=1 << 30)
            if data is None:
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def push_state(self) -> None:
        """Copy the staging folder's resume state to the bucket (the config, then the records),
        while this run holds the lock."""
        if self._lost.is_set():
            self.check_lock()
        for key in STATE_KEYS:
            path = os.path.join(self.stage, key)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    self.store.put(key, f.read())

    # -- the lock ---------------------------------------------------------------------------------

    def _lock_body(self, n: int) -> bytes:
        me = {"run": self.run_id, "host": socket.gethostname(), "stage": self.stage, "pid": os.getpid()}
        return json.dumps({**me, "renewal": n, "time": time.time()}).encode()

    def _holder(self) -> tuple[str, dict] | None:
        """(ETag, contents) of the lock, or None where there is none."""
        got = self.store.get_info(LOCK, limit=4096)
        if got is None:
            return None
        try:
            holder = json.loads(got[0])
        except ValueError:
            holder = {}
        return got[1].etag, holder if isinstance(holder, dict) else {}

    def _acquire(self, log) -> None:
        waited_for = None
        while True:
            etag = self.store.put_if(LOCK, self._lock_body(0))
            if etag is not None:
                self._etag = etag
                return
            seen = self._holder()
            if seen is None:
                continue  # released meanwhile: try again
            tag, holder = seen
            mine = holder.get("host") == socket.gethostname() and holder.get("stage") == self.stage
            if mine or waited_for == tag:  # this machine's dead run, or unchanged for LOCK_WAIT_S: taken over
                etag = self.store.put_if(LOCK, self._lock_body(0), if_match=tag)
                if etag is not None:
                    log(f"{self.url}: taking over from an interrupted run (run {holder.get('run', '?')[:8]} "
                        f"on {holder.get('host', '?')})")  # fmt: skip
                    self._etag = etag
                    return
                waited_for = None
                continue
            if waited_for is not None:  # renewed while we waited: a live run
                raise ImgprepError(
                    f"{self.url}: another `imgprep prepare` is writing this prefix (host {holder.get('host', '?')}, "
                    f"pid {holder.get('pid', '?')}); wait for it to finish, or stop it and run this again"
                )
            log(f"{self.url}: locked by run {holder.get('run', '?')[:8]} on {holder.get('host', '?')}; "
                f"waiting {LOCK_WAIT_S:.0f} s to see whether it is still alive")  # fmt: skip
            waited_for = tag
            time.sleep(LOCK_WAIT_S)

    def _renew(self, stop: threading.Event) -> None:
        n = 0
        while not stop.wait(RENEW_S):
            n += 1
            try:
                etag = self.store.put_if(LOCK, self._lock_body(n), if_match=self._etag)
            except ImgprepError:  # the store unreachable for a while: try at the next renewal
                continue
            if etag is None:
                self._lost.set()
                return
            self._etag = etag

    @contextlib.contextmanager
    def locked(self, log):
        """Hold the prefix's lock (renewed in the background) for the run; released at the end
        where the run did not commit (an interrupted or failed run: the next one resumes)."""
        self._acquire(log)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(stop,), daemon=True, name="imgprep-lock")
        renewer.start()
        try:
            yield self
        finally:
            stop.set()
            renewer.join()
            if self._etag is not None and not self._lost.is_set():
                with contextlib.suppress(ImgprepError):
                    seen = self._holder()
                    if seen is not None and seen[1].get("run") == self.run_id:
                        self.store.delete(LOCK)
            self._etag = None

    def check_lock(self) -> None:
        """Raise where another run has taken this run's lock over (it renews, or read back: a
        store without conditional writes only keeps the last writer's run id)."""
        seen = self._holder()
        if self._lost.is_set() or seen is None or seen[1].get("run") != self.run_id:
            raise ImgprepError(
                f"{self.url}: another `imgprep prepare` run has taken over this prefix; its manifest is "
                "left to that run (run one prepare per prefix)"
            )

    def verify_records(self, records: dict) -> set[str]:
        """The splits whose recorded shards are missing or changed in the bucket."""
        bad = set()
        for rec in records.values():
            sh = rec["shard"]
            if sh is None:
                continue
            got = self.store.head_or_none(sh["path"])
            if (
                got is None
                or got.size != sh["bytes"]
                or got.etag.strip('"') != rec.get("md5")
                or self.store.head_or_none(index_path(sh["path"])) is None
            ):
                bad.add(rec["split"])
        return bad

    # -- the end ----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Put the statistics and rejects from the staging folder, then (this run still owning the
        prefix) the manifest, last; then remove the resume state here and in the bucket."""
        for rel in (f"{STATS_DIR}/{STATS_FILE}", f"{STATS_DIR}/{MEAN_FILE}", REJECTS):
            path = os.path.join(self.stage, rel)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    self.store.put_checked(rel, f.read())
        self.check_lock()
        with open(os.path.join(self.stage, MANIFEST), "rb") as f:
            self.store.put_checked(MANIFEST, f.read())
        for key in STATE_KEYS:
            self.store.delete(key)
        shutil.rmtree(self.stage, ignore_errors=True)
