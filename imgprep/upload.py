"""`imgprep upload OUT URL`: copy a prepared dataset to object storage (`s3://bucket/prefix`).

Every file the manifest names (shards, their index files, the statistics, the rejects list) is
put first (in parts where larger than `remote.MULTIPART_PART`), each checked against the local copy
(size, and the ETag: S3 makes it the MD5 of a single-part body, or of a multipart upload's part
MD5s), and the manifest last: a prefix without a manifest is an
unfinished upload that no loader takes for a dataset. Run again after an interruption, it skips
the objects already there with the right size and ETag, and puts the rest.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import setting
from .dataset import MANIFEST, MEAN_FILE, REJECTS, STATS_DIR, STATS_FILE, open_dataset
from .errors import ImgprepError
from .loader_base import RemoteSettings
from .remote import Store, file_etag, is_url
from .shards import index_path

__all__ = ["UploadConfig", "upload"]


@dataclass(frozen=True)
class UploadConfig(RemoteSettings):
    out: str = setting(help="A prepared dataset (OUT of `imgprep prepare`).", path=True)
    url: str = setting(help="Where to put it: s3://BUCKET/PREFIX.")
    workers: int = setting(8, "Objects put at once.", min=1, max=256)


def _files(out: str) -> list[str]:
    """The dataset's files relative to OUT, manifest last."""
    ds = open_dataset(out)
    rels = []
    for split in ds.splits.values():
        for sh in split["shards"]:
            rels += [sh["path"], os.path.relpath(index_path(os.path.join(out, sh["path"])), out)]
    for rel in (f"{STATS_DIR}/{STATS_FILE}", f"{STATS_DIR}/{MEAN_FILE}", REJECTS):
        if os.path.isfile(os.path.join(out, rel)):
            rels.append(rel)
    return rels


def upload(cfg: UploadConfig, log=print) -> dict:
    """Put the dataset at cfg.out under cfg.url; returns {"put": n, "skipped": n, "bytes": n}."""
    if not is_url(cfg.url) or not cfg.url.startswith("s3://"):
        raise ImgprepError(f"{cfg.url}: not an s3:// URL; write s3://BUCKET/PREFIX")
    store = Store(cfg.url, cfg.retry())
    rels = _files(cfg.out)
    sent = {"put": 0, "skipped": 0, "bytes": 0}

    def one(rel: str) -> None:
        path = os.path.join(cfg.out, rel)
        size, etag = os.path.getsize(path), file_etag(path)
        there = store.head_or_none(rel)
        if there is not None and there.size == size and there.etag.strip('"') == etag:
            sent["skipped"] += 1
            return
        store.put_file_checked(rel, path, None if "-" in etag else etag)  # in parts where large
        sent["put"] += 1
        sent["bytes"] += size

    with ThreadPoolExecutor(cfg.workers) as pool:
        for f in [pool.submit(one, rel) for rel in rels]:
            f.result()
    one(MANIFEST)  # last: its presence says the upload is complete
    log(f"{cfg.url}: {sent['put']} objects put ({sent['bytes'] / 1e6:,.1f} MB), {sent['skipped']} already there")
    return sent
