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
  - the statistics and rejects are put when every unit is done, and the manifest last, after
    checking that no other run has taken over the prefix (a run id, written at the start and
    read back before the manifest: a second `prepare` into the same prefix makes the first stop
    with one line instead of committing a mixture). The prefix's `.imgprep/` is removed at the end.
What holds: a prefix with a manifest is complete, and its objects are byte-identical to a local
run's. What does not: two runs started at the same moment can both write shards before one of
them notices (S3 has no lock); the one that commits last wins and the other stops with an error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid

from .dataset import MANIFEST, MEAN_FILE, REJECTS, STATS_DIR, STATS_FILE
from .errors import ImgprepError
from .remote import RemoteError, Store
from .shards import index_path

__all__ = ["BucketOut", "upload_shard"]

STATE_KEYS = (".imgprep/config.json", ".imgprep/state.npz")
RUN_ID = ".imgprep/run-id"


def upload_shard(url: str, tmp_dir: str, rel: str, idx_rel: str, aws_env: dict) -> str:
    """Put a unit's shard and index (written under `tmp_dir`) at `url` with the driver's AWS
    settings over this process's own; returns the shard's MD5."""
    store = Store(url, env={**os.environ, **aws_env})
    with open(os.path.join(tmp_dir, idx_rel), "rb") as f:
        store.put_checked(idx_rel, f.read())
    with open(os.path.join(tmp_dir, rel), "rb") as f:
        return store.put_checked(rel, f.read())


class BucketOut:
    """OUT at an s3:// URL: its store, the local staging folder and the run id."""

    def __init__(self, url: str):
        if not url.startswith("s3://"):
            raise ImgprepError(f"{url}: prepare writes to s3:// URLs only (an HTTP server cannot be written)")
        self.url = url.rstrip("/")
        self.store = Store(self.url)
        self.run_id = uuid.uuid4().hex
        from .cache import default_cache_dir

        key = hashlib.sha256(self.url.encode()).hexdigest()[:24]
        self.stage = os.path.join(os.path.dirname(default_cache_dir()), "stage", key)

    # -- what the prefix holds --------------------------------------------------------------------

    def read(self, rel: str) -> bytes | None:
        """The object at `rel` under the prefix (at most 512 MiB: a manifest or a settings file),
        or None where there is none."""
        return self.store.get_or_none(rel, limit=1 << 29)

    def is_empty(self) -> bool:
        """Whether the prefix holds no object (a bucket that does not exist yet counts as empty: the
        first put creates it where the store does, else says so)."""
        try:
            return not self.store.list("")
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
        """Copy the staging folder's resume state to the bucket (the config, then the records)."""
        for key in STATE_KEYS:
            path = os.path.join(self.stage, key)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    self.store.put(key, f.read())

    def claim(self) -> None:
        """Record this run's id in the prefix (checked again before the manifest is written)."""
        self.store.put(RUN_ID, self.run_id.encode())

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
        owner = self.store.get_or_none(RUN_ID, limit=1024)
        if owner != self.run_id.encode():
            raise ImgprepError(
                f"{self.url}: another `imgprep prepare` run has taken over this prefix; its manifest is "
                "left to that run (run one prepare per prefix)"
            )
        with open(os.path.join(self.stage, MANIFEST), "rb") as f:
            self.store.put_checked(MANIFEST, f.read())
        for key in (*STATE_KEYS, RUN_ID):
            self.store.delete(key)
        shutil.rmtree(self.stage, ignore_errors=True)
