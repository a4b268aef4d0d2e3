"""The on-disk format of a prepared dataset, owned here: `manifest.json`, `stats/`, `rejects.jsonl`.

`prepare` writes through this module, and `verify`, the loaders and the trainer read through it.
A manifest is validated once, on reading: its types, its format version, and every shard path it
names, which must resolve (after symlinks) inside the dataset folder. Nothing outside the folder
is ever opened because a manifest says so.

Layout of OUT:
  manifest.json             format, version, settings, classes, per split the shards (path, count,
                            bytes, sha256) and the counts of converted, skipped and rejected files
  {train,val}/SPLIT-NNNNNN.tar + .idx    WebDataset shards and their DALI index files
  stats/mean.npy            float32 (S, S, 3) mean image, RGB, 0-255
  stats/stats.json          channel mean/std, covariance, eigval, eigvec, counts, size
  rejects.jsonl             one {"split", "path", "reason"} per file that could not be decoded
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .constants import MAX_STORED_SIZE, SPLITS
from .errors import ImgprepError
from .fileio import atomic_file, json_bytes, write_atomic
from .shards import index_path

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "REJECTS",
    "STATS_DIR",
    "MEAN_FILE",
    "STATS_FILE",
    "build_manifest",
    "write_manifest",
    "read_manifest",
    "batch_within",
    "write_stats",
    "load_stats",
    "write_rejects",
    "resolve_inside",
    "key_inside",
    "parse_stats",
    "DatasetInfo",
    "Dataset",
    "open_dataset",
]

FORMAT_NAME = "imgprep-webdataset"
# Version of the layout above; a reader refuses a newer one. 2: each shard record also holds the
# CRC-32 of every sample (`sample_crc32`), which the loaders check before training on it.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
STATS_DIR = "stats"
MEAN_FILE = "mean.npy"
STATS_FILE = "stats.json"
MAX_MANIFEST_BYTES = 1 << 29  # 512 MiB: ImageNet's, with every sample's CRC-32, is about 12 MB


def build_manifest(settings: dict, layout: str, classes: list[dict], splits: dict, size: int, quality: int) -> dict:
    """The manifest of a finished dataset (`splits`: per split the shards and the file counts)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": settings,
        "source_layout": layout,
        "classes": classes,
        "splits": splits,
        "sample": {
            "jpg": f"JPEG {size}x{size} RGB, quality {quality}",
            "cls": "class index, ASCII decimal",
            "json": "source path, original size, class name",
        },
        "stats": f"{STATS_DIR}/{STATS_FILE}" if "train" in splits else None,
    }


def write_manifest(out: str, manifest: dict) -> None:
    """Write OUT/manifest.json (atomically: its presence means the dataset is complete)."""
    write_atomic(os.path.join(out, MANIFEST), json_bytes(manifest))


def write_rejects(out: str, rejects: list[dict]) -> None:
    """Write OUT/rejects.jsonl, one JSON object per rejected file."""
    write_atomic(os.path.join(out, REJECTS), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())


def write_stats(out: str, stats, size: int) -> None:
    """Write OUT/stats/mean.npy and stats.json from a `stats.DatasetStats`."""
    d = os.path.join(out, STATS_DIR)
    os.makedirs(d, exist_ok=True)
    with atomic_file(os.path.join(d, MEAN_FILE)) as f:
        np.save(f, stats.mean_image)
    write_atomic(os.path.join(d, STATS_FILE), json_bytes({**stats.to_json(), "size": size}))


def resolve_inside(root: str, rel, what: str) -> str:
    """The absolute path of `rel` under `root`, or ImgprepError when it leads outside `root`
    (an absolute path, `..`, or a symlink pointing elsewhere). Nothing is opened."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel or "\0" in rel:
        raise ImgprepError(
            f"{what}: path {rel!r} is not a relative path inside the dataset folder; "
            "the file is damaged or crafted: prepare the dataset again"
        )
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([base, path]) != base:
        raise ImgprepError(
            f"{what}: path {rel!r} leads outside the dataset folder {root}; "
            "the file is damaged or crafted: prepare the dataset again"
        )
    return path


def key_inside(rel, what: str) -> str:
    """`rel` as a key under a dataset's URL, or ImgprepError when it is not a plain relative path
    (absolute, `..`, backslashes): a manifest never leads outside the dataset's prefix."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel:
        raise ImgprepError(
            f"{what}: path {rel!r} is not a relative path inside the dataset; "
            "the file is damaged or crafted: prepare the dataset again"
        )
    return rel


def _fail(path: str, why: str) -> ImgprepError:
    return ImgprepError(f"{path}: {why}; not a manifest written by `imgprep prepare` (prepare the dataset again)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_shard(p: str, split: str, i: int, sh) -> None:
    where = f"splits.{split}.shards[{i}]"
    if not isinstance(sh, dict):
        raise _fail(p, f"{where} is not an object")
    for key, ok in (
        ("path", lambda v: isinstance(v, str)),
        ("count", lambda v: _is_int(v) and v >= 0),
        ("bytes", lambda v: _is_int(v) and v >= 0),
        ("sha256", lambda v: isinstance(v, str) and len(v) == 64),
    ):
        if key not in sh or not ok(sh[key]):
            raise _fail(p, f"{where}.{key} is missing or of the wrong type")
    crcs = sh.get("sample_crc32")  # format 2; format 1 has none
    if crcs is not None and (not isinstance(crcs, str) or len(crcs) != 8 * sh["count"]):
        raise _fail(p, f"{where}.sample_crc32 is not 8 hex digits per sample")


def validate_manifest(m, p: str) -> dict:
    """`m` itself when it has the types this version reads, else ImgprepError naming the first problem."""
    if not isinstance(m, dict):
        raise _fail(p, f"holds a JSON {type(m).__name__}, not an object")
    version = m.get("format_version")
    if m.get("format") != FORMAT_NAME or not _is_int(version):
        raise _fail(p, "no 'format'/'format_version'")
    if version > FORMAT_VERSION:
        raise ImgprepError(
            f"{p}: format version {version} is newer than this imgprep reads ({FORMAT_VERSION}); upgrade imgprep"
        )
    config, classes, splits = m.get("config"), m.get("classes"), m.get("splits")
    if not isinstance(config, dict) or not _is_int(config.get("size")) or not 1 <= config["size"] <= MAX_STORED_SIZE:
        raise _fail(p, f"config.size is missing or not a whole number from 1 to {MAX_STORED_SIZE}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, dict) and "name" in c for c in classes):
        raise _fail(p, "'classes' is not a list of classes")
    if not isinstance(splits, dict) or any(s not in SPLITS for s in splits):
        raise _fail(p, f"'splits' is not an object of {', '.join(SPLITS)}")
    for split, s in splits.items():
        if not isinstance(s, dict) or not isinstance(s.get("shards"), list) or not _is_int(s.get("count")):
            raise _fail(p, f"splits.{split} has no 'count' and 'shards' list")
        for i, sh in enumerate(s["shards"]):
            _check_shard(p, split, i, sh)
        if sum(sh["count"] for sh in s["shards"]) != s["count"]:
            raise _fail(p, f"splits.{split}.count differs from the sum of its shards' counts")
    return m


def read_manifest(root: str) -> dict:
    """The validated manifest of a prepared dataset, or ImgprepError naming what is wrong."""
    p = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise ImgprepError(f"{root}: no such folder; give the OUT folder of `imgprep prepare`")
    if not os.path.isfile(p):
        raise ImgprepError(f"{root}: no {MANIFEST}; not a prepared dataset (or `prepare` has not finished: rerun it)")
    try:
        with open(p, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as exc:
        raise ImgprepError(f"{p}: unreadable manifest ({exc})") from None
    return validate_manifest(m, p)


def batch_within(root: str | Dataset, split: str, batch_size: int, world_size: int = 1) -> int:
    """`batch_size`, or less where the split gives each of `world_size` ranks fewer samples: for
    evaluation, where a batch larger than the split would only be padding."""
    return open_dataset(root).batch_within(split, batch_size, world_size)


def load_stats(root: str, size: int | None = None) -> tuple[np.ndarray, dict]:
    """(mean image float32 (S, S, 3), stats.json dict) of a prepared dataset, checked for shape."""
    d = os.path.join(root, STATS_DIR)

    def read(name):
        with open(os.path.join(d, name), "rb") as f:
            return f.read()

    return parse_stats(read, d, size)


def parse_stats(read, d: str, size: int | None = None) -> tuple[np.ndarray, dict]:
    """The statistics from `read(name)` (the bytes of stats/NAME), checked for shape; `d` names
    the folder (or URL) in errors."""
    import io

    try:
        st = json.loads(read(STATS_FILE))
        mean = np.load(io.BytesIO(read(MEAN_FILE)), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImgprepError(f"{d}: no readable statistics ({exc}); prepare a train split first") from None
    try:
        shapes = {k: np.asarray(st[k], np.float64).shape for k in ("mean", "std", "eigval", "eigvec")}
    except (TypeError, KeyError, ValueError):
        shapes = None
    if shapes != {"mean": (3,), "std": (3,), "eigval": (3,), "eigvec": (3, 3)}:
        raise ImgprepError(f"{d}/{STATS_FILE}: not the statistics `imgprep prepare` writes; prepare the dataset again")
    s = size or mean.shape[0]
    if mean.dtype != np.float32 or mean.shape != (s, s, 3):
        raise ImgprepError(
            f"{d}/{MEAN_FILE}: {mean.dtype} {mean.shape}, expected float32 ({s}, {s}, 3); prepare the dataset again"
        )
    return mean, st


@dataclass
class DatasetInfo:
    """A prepared split: its shards (paths checked to lie inside the dataset), counts, statistics, classes."""

    root: str
    split: str
    size: int
    shards: list[str]  # absolute .tar paths in manifest order
    records: list[dict]  # their manifest records (bytes, sha256, sample_crc32)
    counts: list[int]
    classes: list[dict]
    stats: dict | None
    mean_image: np.ndarray | None  # float32 (size, size, 3)
    dataset: Dataset | None = None  # the opened dataset (at a URL: its store and shard cache)

    @classmethod
    def load(cls, root: str | Dataset, split: str, need_stats: bool = True) -> DatasetInfo:
        """A split of a prepared dataset (a path, opened here, or a `Dataset` already open)."""
        return open_dataset(root).info(split, need_stats)

    @property
    def total(self) -> int:
        return sum(self.counts)


class Dataset:
    """A prepared dataset, opened once: its manifest read and validated on opening, its statistics
    on first use, and both kept, so that a process reads each once however many loaders, batch
    sizes and checks it asks for. Everything reads the dataset through this object.

    At a URL (`s3://bucket/prefix`, `http(s)://host/path`): `store` reads its objects, the shard
    "paths" are URLs, and the loaders read the shards through a `cache.ShardCache`."""

    def __init__(self, root: str, manifest: dict, store=None):
        self.root, self.manifest, self.store = root, manifest, store
        self._stats: tuple[np.ndarray, dict] | None = None
        self._shards: dict[str, list[str]] = {}  # per split: the shard paths, checked once

    @classmethod
    def open(cls, root: str, retry=None) -> Dataset:
        """Read and validate the manifest of the prepared dataset at `root` (a folder or a URL)."""
        from .fileio import is_url  # not `remote`'s: a local dataset never imports the HTTP client

        if not is_url(root):
            return cls(root, read_manifest(root))
        from .remote import Store

        store = Store(root, retry)
        where = store.url_of(MANIFEST)
        body = store.get_or_none(MANIFEST, limit=MAX_MANIFEST_BYTES)
        if body is None:
            raise ImgprepError(
                f"{where}: not found; not a prepared dataset (or its upload has not finished: the "
                "manifest is written last)"
            )
        try:
            m = json.loads(body)
        except ValueError as exc:
            raise ImgprepError(f"{where}: unreadable manifest ({exc})") from None
        return cls(store.url, validate_manifest(m, where), store)

    @property
    def is_remote(self) -> bool:
        return self.store is not None

    @property
    def size(self) -> int:
        """The stored side of every image."""
        return self.manifest["config"]["size"]

    @property
    def classes(self) -> list[dict]:
        return self.manifest["classes"]

    @property
    def splits(self) -> dict:
        return self.manifest["splits"]

    def stats(self) -> tuple[np.ndarray, dict]:
        """(mean image float32 (S, S, 3), stats.json dict), read on first use."""
        if self._stats is None:
            if self.store is None:
                self._stats = load_stats(self.root, self.size)
            else:
                d = self.store.url_of(STATS_DIR)
                # bounded: stats.json is a few kB, mean.npy S x S x 3 float32 and its header
                limits = {STATS_FILE: 1 << 20, MEAN_FILE: 12 * self.size**2 + 4096}
                self._stats = parse_stats(lambda n: self._get(f"{STATS_DIR}/{n}", limits[n]), d, self.size)
        return self._stats

    def _get(self, key: str, limit: int) -> bytes:
        data = self.store.get_or_none(key, limit=limit)
        if data is None:
            raise ImgprepError(f"{self.store.url_of(key)}: not found; prepare a train split first")
        return data

    def batch_within(self, split: str, batch_size: int, world_size: int = 1) -> int:
        """`batch_size`, or less where `split` gives each rank fewer samples (see `batch_within`)."""
        s = self.splits.get(split)
        return max(1, min(batch_size, -(-s["count"] // world_size))) if s else batch_size

    def info(self, split: str, need_stats: bool = True) -> DatasetInfo:
        """One split: its shards (paths checked to lie inside the dataset and to exist), counts and
        (need_stats) the statistics."""
        root = self.root
        if split not in self.splits:
            raise ImgprepError(f"{root}: no {split!r} split (has {', '.join(self.splits)}); prepare it first")
        records = self.splits[split]["shards"]
        if split not in self._shards and self.store is not None:
            where = self.store.url_of(MANIFEST)
            self._shards[split] = [self.store.url_of(key_inside(sh["path"], where)) for sh in records]
        if split not in self._shards:
            shards = [resolve_inside(root, sh["path"], os.path.join(root, MANIFEST)) for sh in records]
            for p in shards:
                if not os.path.isfile(p) or not os.path.isfile(index_path(p)):
                    raise ImgprepError(f"{p}: missing shard or index; run `imgprep verify {root}`")
            self._shards[split] = shards
        shards = list(self._shards[split])
        stats = mean = None
        if need_stats:
            mean, stats = self.stats()
        counts = [sh["count"] for sh in records]
        return DatasetInfo(root, split, self.size, shards, records, counts, self.classes, stats, mean, self)

    def shard_cache(self, split: str, folder: str = "", limit_gb: float = 0.0, retry=None):
        """The `cache.ShardCache` of a split of a dataset at a URL, in `folder` (default: the
        per-user cache) holding at most `limit_gb` GB (0: the split's size with its index files,
        at most 90% of the disk's free space; never less than two shards)."""
        from .cache import ShardCache, default_cache_dir

        store = self.store if retry is None else self.store.with_retry(retry)
        records = self.splits[split]["shards"]
        folder = folder or default_cache_dir()
        keys = [key_inside(sh["path"], self.store.url_of(MANIFEST)) for sh in records]
        biggest = max((sh["bytes"] for sh in records), default=0)
        cache = ShardCache(store, keys, records, self.size, folder, 0)  # makes (and checks) the folder
        if limit_gb > 0:
            limit = int(limit_gb * 1e9)
            if limit < 2 * biggest:  # the shard being read and the one being fetched
                raise ImgprepError(
                    f"--cache-limit {limit_gb:g}: less than two of {self.root}'s {split} shards "
                    f"({2 * biggest / 1e9:.3f} GB); raise it"
                )
        else:
            free = os.statvfs(cache.folder)
            free = free.f_bavail * free.f_frsize
            whole = int(sum(sh["bytes"] for sh in records) * 1.1)  # the shards and their index files
            limit = max(min(whole, int(free * 0.9)), 2 * biggest)
            if free < 2 * biggest:
                raise ImgprepError(
                    f"{cache.folder}: {free / 1e9:.2f} GB free, less than two of {self.root}'s {split} "
                    f"shards ({2 * biggest / 1e9:.3f} GB); free space or set --cache-dir elsewhere"
                )
        cache.limit = limit
        return cache


def open_dataset(data: str | Dataset, retry=None) -> Dataset:
    """`data` itself when already open, else the prepared dataset at that path or URL, opened
    (`retry`: a `remote.Retry` for a URL)."""
    return data if isinstance(data, Dataset) else Dataset.open(data, retry)
