"""`imgprep verify` and `imgprep stats`: check a prepared dataset against its manifest, and
recompute the training statistics from the stored shards."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from .dataset import MANIFEST, MEAN_FILE, STATS_DIR, STATS_FILE, Dataset, open_dataset, resolve_inside
from .errors import ImgprepError
from .integrity import jpeg_is
from .shards import index_path, iter_samples, read_dali_index, sha256_file
from .stats import StatsAccumulator, finalize

__all__ = ["verify", "recompute_stats"]


def _shard_path(out: str, shard: dict) -> str:
    return resolve_inside(out, shard["path"], os.path.join(out, MANIFEST))


def _decode(jpeg: bytes) -> np.ndarray | None:
    import cv2

    a = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return None if a is None else np.ascontiguousarray(a[:, :, ::-1])


def _check_shard(args) -> tuple[list[str], StatsAccumulator | None, list[str]]:
    """Problems found in one shard, (for train, when asked) its recomputed statistics sums, and the
    source path of each sample (from its .json)."""
    p, sh, size, n_classes, want_stats = args
    rel = sh["path"]
    if not os.path.exists(p):
        return [f"{rel}: missing"], None, []
    problems, sources = [], []
    if os.path.getsize(p) != sh["bytes"]:
        problems.append(f"{rel}: {os.path.getsize(p)} bytes, manifest says {sh['bytes']}")
    elif sha256_file(p) != sh["sha256"]:
        problems.append(f"{rel}: sha256 differs from the manifest")
    idx = index_path(p)
    try:
        index = read_dali_index(idx)
    except (OSError, ValueError) as exc:
        problems.append(f"{rel[:-4]}.idx: {exc}")
        index = None
    acc = StatsAccumulator(size) if want_stats else None
    n = 0
    try:
        for key, sample in iter_samples(p):
            n += 1
            sources.append(_source(sample.get("json", b"")))
            try:
                label = int(sample.get("cls", b"").decode())
            except ValueError:
                problems.append(f"{rel}: sample {key} has no valid .cls")
                continue
            if not 0 <= label < n_classes:
                problems.append(f"{rel}: sample {key} label {label} outside 0..{n_classes - 1}")
            if not jpeg_is(sample.get("jpg", b""), size):  # read from the header: a forged size never decodes
                problems.append(f"{rel}: sample {key} is not a {size}x{size} JPEG (from its header)")
                continue
            img = _decode(sample.get("jpg", b""))
            if img is None:
                problems.append(f"{rel}: sample {key} image does not decode")
                continue
            if img.shape != (size, size, 3):
                problems.append(f"{rel}: sample {key} image is {img.shape[1]}x{img.shape[0]}, not {size}x{size}")
                continue
            if acc is not None:
                acc.add(img)
    except Exception as exc:  # a damaged tar
        problems.append(f"{rel}: unreadable tar ({exc})")
    if n != sh["count"]:
        problems.append(f"{rel}: {n} samples, manifest says {sh['count']}")
    if index is not None and len(index) != n:
        problems.append(f"{rel[:-4]}.idx: lists {len(index)} samples, shard has {n}")
    return problems, acc, sources


def _source(meta: bytes) -> str | None:
    try:
        src = json.loads(meta).get("source")
    except (ValueError, AttributeError):
        return None
    return src if isinstance(src, str) else None


def _duplicates(split: str, sources: list[str | None]) -> list[str]:
    """A problem for each source image stored more than once in a split (a resume that mixed plans)."""
    seen = Counter(src for src in sources if src is not None)
    problems = []
    dups = sorted(k for k, v in seen.items() if v > 1)
    for src in dups[:20]:
        problems.append(f"{split}: source {src} is stored {seen[src]} times")
    if len(dups) > 20:
        problems.append(f"{split}: {len(dups) - 20} more sources stored more than once")
    return problems


def _map(fn, jobs, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        return map(fn, jobs)
    from ._mp import init_worker, pool_context

    pool = pool_context().Pool(min(workers, len(jobs)), initializer=init_worker, initargs=(os.getpid(),))
    try:
        return pool.map(fn, jobs)
    finally:
        pool.close()


def _checked(ds: Dataset, split: str, want_stats: bool, workers: int, cache_dir: str = ""):
    """`_check_shard`'s result for each shard of `split`, in order. A dataset at a URL is read
    through the shard cache, `workers` shards at a time (each pinned while it is checked); a shard
    that cannot be fetched is a problem, not an error."""
    m = ds.manifest
    size, n_classes = m["config"]["size"], len(m["classes"])
    records = m["splits"][split]["shards"]
    if not ds.is_remote:
        jobs = [(_shard_path(ds.root, sh), sh, size, n_classes, want_stats) for sh in records]
        return list(_map(_check_shard, jobs, workers))
    cache = ds.shard_cache(split, cache_dir)
    out = []
    for a in range(0, len(records), max(1, workers)):
        group = range(a, min(len(records), a + max(1, workers)))
        cache.pin(group)
        jobs, failed = [], {}
        for i in group:
            try:
                jobs.append((cache.path(i), {**records[i], "path": cache.url(i)}, size, n_classes, want_stats))
            except ImgprepError as exc:
                failed[i] = ([str(exc)], None, [])
        done = iter(_map(_check_shard, jobs, workers))
        out += [failed[i] if i in failed else next(done) for i in group]
    cache.unpin_all()
    return out


def verify(out: str | Dataset, workers: int = 1, cache_dir: str = "") -> dict:
    """Check every shard against the manifest. Returns {"problems": [...], "shards", "samples"}.
    A dataset at a URL is fetched through the shard cache (`cache_dir`: default the user's)."""
    ds = open_dataset(out)
    out, m = ds.root, ds.manifest
    per_split = {split: _checked(ds, split, False, workers, cache_dir) for split in m["splits"]}
    problems = [p for rs in per_split.values() for ps, _, _ in rs for p in ps]
    for split, rs in per_split.items():
        problems += _duplicates(split, [src for r in rs for src in r[2]])
    for name in [os.path.join(STATS_DIR, MEAN_FILE), os.path.join(STATS_DIR, STATS_FILE)] if m.get("stats") else []:
        there = ds.store.head_or_none(name) is not None if ds.is_remote else os.path.exists(os.path.join(out, name))
        if not there:
            problems.append(f"{name}: missing")
    shards = sum(len(rs) for rs in per_split.values())
    return {"problems": problems, "shards": shards, "samples": sum(s["count"] for s in m["splits"].values())}


def recompute_stats(out: str | Dataset, workers: int = 1, cache_dir: str = "") -> dict:
    """Recompute the training statistics from the stored (decoded) shards and compare."""
    ds = open_dataset(out)
    out, m = ds.root, ds.manifest
    if "train" not in m["splits"]:
        raise ImgprepError(f"{out}: no train split; statistics are computed over the training set")
    size = ds.size
    mean_img, st = ds.stats()
    acc = StatsAccumulator(size)
    for problems, part, _ in _checked(ds, "train", True, workers, cache_dir):
        if problems:
            raise ImgprepError(f"{problems[0]}; run `imgprep verify {out}`")
        acc.merge(part)
    new = finalize(acc)
    # eigenvectors are defined up to sign: compare |cos| of the angle
    cosines = np.abs(np.sum(new.eigvec * np.array(st["eigvec"]), axis=1))
    return {
        "images": new.images,
        "stored": {k: st[k] for k in ("mean", "std", "eigval")},
        "recomputed": {"mean": new.mean.tolist(), "std": new.std.tolist(), "eigval": new.eigval.tolist()},
        "max_abs_diff": {
            "mean_image": float(np.abs(new.mean_image - mean_img).max()),
            "mean": float(np.abs(new.mean - st["mean"]).max()),
            "std": float(np.abs(new.std - st["std"]).max()),
            "cov": float(np.abs(new.cov - np.array(st["cov"])).max()),
            "eigval": float(np.abs(new.eigval - st["eigval"]).max()),
        },
        "eigvec_angle_deg": [float(np.degrees(np.arccos(min(1.0, c)))) for c in cosines],
    }
