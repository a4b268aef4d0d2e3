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
import json
import os
import shutil
import tempfile
import uuid

from .dataset import FORMAT_NAME, MANIFEST, MEAN_FILE, REJECTS, STATS_DIR, STATS_FILE
from .errors import ImgprepError
from .remote import RemoteError, Store, is_url

__all__ = ["BucketOut", "is_bucket"]

STATE_KEYS = (".imgprep/config.json", ".imgprep/state.npz")
RUN_ID = ".imgprep/run-id"


def is_bucket(out: str) -> bool:
    return is_url(out)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _exists(store: Store, key: str) -> bool:
    try:
        store.head(key)
        return True
    except RemoteError as exc:
        if exc.status == 404:
            return False
        raise


def put_checked(store: Store, key: str, data: bytes) -> str:
    """Put `data` at `key` and check what the store holds (size, MD5 ETag); returns the MD5."""
    md5 = _md5(data)
    store.put(key, data)
    got = store.head(key)
    etag = got.etag.strip('"')
    if got.size != len(data) or ("-" not in etag and etag and etag != md5):
        raise ImgprepError(
            f"{store.url_of(key)}: the store holds {got.size:,} bytes (ETag {got.etag}) after a put of "
            f"{len(data):,} (MD5 {md5}); run the same command again"
        )
    return md5


def upload_shard(url: str, tmp_dir: str, rel: str, idx_rel: str, aws_env: dict) -> str:
    """Put a unit's shard and index (written under `tmp_dir`) at `url` with the driver's AWS
    settings over this process's own; returns the shard's MD5."""
    store = Store(url, env={**os.environ, **aws_env})
    with open(os.path.join(tmp_dir, idx_rel), "rb") as f:
        put_checked(store, idx_rel, f.read())
    with open(os.path.join(tmp_dir, rel), "rb") as f:
        return put_checked(store, rel, f.read())


def unit_folder() -> str:
    """A private temporary folder for one unit's shard, in the process that makes it."""
    return tempfile.mkdtemp(prefix="imgprep-unit-")


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

    def state(self, wanted: dict, differences) -> str:
        """'new', 'resume' or 'complete' for the prefix; raises if it holds something else or a
        dataset of other settings (as for a local OUT)."""
        for key, kind in ((MANIFEST, "complete"), (STATE_KEYS[0], "resume")):
            try:
                saved = json.loads(self.store.get(key, limit=1 << 29))
            except RemoteError as exc:
                if exc.status == 404:
                    continue
                raise
            except ValueError:
                raise ImgprepError(
                    f"{self.store.url_of(key)}: unreadable; remove the prefix or choose another"
                ) from None
            if kind == "complete":
                if not isinstance(saved, dict) or saved.get("format") != FORMAT_NAME:
                    raise ImgprepError(f"{self.url}: its {MANIFEST} is not an imgprep dataset's; choose another prefix")
                saved = saved.get("config")
            if not isinstance(saved, dict) or not {"src", "size", "seed"} <= set(saved):
                raise ImgprepError(
                    f"{self.store.url_of(key)}: not the settings of an imgprep dataset; choose another prefix"
                )
            saved = {k: v for k, v in saved.items() if k != "source_listing_sha256"}
            diff = differences(saved, wanted)
            if diff:
                raise ImgprepError(
                    f"{self.url} holds a dataset prepared with other settings ({'; '.join(diff)}); "
                    "use the same settings to resume, or choose another prefix"
                )
            return kind
        try:
            held = self.store.list("")
        except RemoteError as exc:
            if exc.status != 404:
                raise
            held = []  # no such bucket yet: the first put creates it where the store does, else says so
        if held:
            raise ImgprepError(f"{self.url}: not empty and not an imgprep dataset; choose an empty or new prefix")
        return "new"

    def pull_state(self) -> None:
        """Copy the bucket's resume state into the staging folder where this machine has none."""
        local = [os.path.join(self.stage, k) for k in STATE_KEYS]
        if all(os.path.exists(p) for p in local):
            return
        for key, path in zip(STATE_KEYS, local, strict=True):
            try:
                data = self.store.get(key, limit=1 << 30)
            except RemoteError as exc:
                if exc.status == 404:
                    continue
                raise
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
            try:
                got = self.store.head(sh["path"])
            except RemoteError as exc:
                if exc.status != 404:
                    raise
                bad.add(rec["split"])
                continue
            if (
                got.size != sh["bytes"]
                or got.etag.strip('"') != rec.get("md5")
                or not _exists(self.store, sh["path"][:-4] + ".idx")
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
                    put_checked(self.store, rel, f.read())
        try:
            owner = self.store.get(RUN_ID, limit=1024).decode()
        except RemoteError as exc:
            if exc.status != 404:
                raise
            owner = None
        if owner != self.run_id:
            raise ImgprepError(
                f"{self.url}: another `imgprep prepare` run has taken over this prefix; its manifest is "
                "left to that run (run one prepare per prefix)"
            )
        with open(os.path.join(self.stage, MANIFEST), "rb") as f:
            put_checked(self.store, MANIFEST, f.read())
        for key in (*STATE_KEYS, RUN_ID):
            self.store.delete(key)
        shutil.rmtree(self.stage, ignore_errors=True)
