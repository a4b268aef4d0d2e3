"""`imgprep prepare`: source images to shuffled WebDataset shards, with the training statistics
computed in the same pass.

The work is split into independent units, one per output shard. A unit decodes, resizes, crops and
re-encodes its images, writes its shard and index, and returns its counts and exact statistics
sums; the driver merges those, records each finished unit in a state file (so a rerun resumes),
and writes the statistics, the reject list and the manifest at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from . import constants as C
from ._mp import resolve_workers
from .codec import decode_rgb, encode_jpeg
from .errors import DecodeError, ImgprepError, NotAnImage
from .shards import ShardWriter, sha256_file
from .sources import Item, Source, SourceIndex, discover
from .stats import StatsAccumulator, finalize
from .transforms import resize_center_crop

__all__ = ["PrepareConfig", "Unit", "plan_units", "process_image", "run_unit", "prepare"]


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of one `prepare` run. All but `workers` define the output."""

    src: str
    out: str
    split: str = "train"  # split name when SRC is a plain folder of class folders
    layout: str = "auto"  # auto, folders, ilsvrc, kaggle
    val_labels: str | None = None  # labels of a flat validation folder or val tar
    size: int = C.STORED_SIZE
    quality: int = C.JPEG_QUALITY
    shard_size: int = C.SHARD_SIZE
    seed: int = 0
    workers: int = 0  # 0: all available cores (local executor) or CPUs of the local Ray instance
    executor: str = "local"  # local (process pool) or ray
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: start one

    def dataset_settings(self) -> dict:
        """The settings that determine the output bytes (compared on rerun); not how they are run."""
        d = asdict(self)
        for k in ("workers", "out", "executor", "ray_address"):
            d.pop(k)
        d["src"] = os.path.abspath(self.src)
        if self.val_labels:
            d["val_labels"] = os.path.abspath(self.val_labels)
        return d

    def validate(self) -> None:
        """Raise ImgprepError on out-of-range settings."""
        if self.size < 8:
            raise ImgprepError(f"--size {self.size}: must be at least 8 pixels")
        if not 1 <= self.quality <= 100:
            raise ImgprepError(f"--quality {self.quality}: must be between 1 and 100")
        if self.shard_size < 1:
            raise ImgprepError(f"--shard-size {self.shard_size}: must be at least 1")
        if self.workers < 0:
            raise ImgprepError(f"--workers {self.workers}: must be 0 (all cores) or more")
        if self.executor not in ("local", "ray"):
            raise ImgprepError(f"--executor {self.executor!r}: local or ray")
        if self.split not in C.SPLITS:
            raise ImgprepError(f"--split {self.split!r}: must be one of {', '.join(C.SPLITS)}")


@dataclass
class Unit:
    """One output shard's worth of work: (key, source item) per sample."""

    split: str
    index: int
    items: list[tuple[str, Item]]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def path(self) -> str:
        """Shard path relative to OUT."""
        return f"{self.split}/{self.name}.tar"


def plan_units(index: SourceIndex, shard_size: int, seed: int) -> list[Unit]:
    """Shuffle each split globally with `seed` and cut it into units of `shard_size` samples.

    The permutation depends only on the sorted item list, the seed and the split, so every
    executor and every rerun plans the same units.
    """
    units = []
    for split_no, split in enumerate(C.SPLITS):
        items = index.splits.get(split)
        if not items:
            continue
        perm = np.random.default_rng([seed, split_no]).permutation(len(items))
        # Keys are the shuffled position: unique, dot-free, and sorted in shard order.
        rows = [(f"{pos:08d}", items[i]) for pos, i in enumerate(perm)]
        for u, start in enumerate(range(0, len(rows), shard_size)):
            units.append(Unit(split, u, rows[start:start + shard_size]))
    return units


def process_image(data: bytes, name: str, size: int, quality: int):
    """Decode, resize the shorter side to `size`, centre-crop, re-encode.

    Returns:
        (jpeg bytes, stored pixels uint8 (size, size, 3), DecodedImage)
    Raises:
        DecodeError, NotAnImage.
    """
    img = decode_rgb(data, name, min_side=size)
    pixels = resize_center_crop(img.pixels, size)
    return encode_jpeg(pixels, quality), pixels, img


_progress_counter = None  # multiprocessing.Value in pool workers, set by _init_worker


def _init_worker(counter=None) -> None:
    global _progress_counter
    _progress_counter = counter
    try:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from processes, one per core
    except ImportError:
        pass


def run_unit(source: Source, unit: Unit, classes: list[dict], out: str, size: int,
             quality: int, with_stats: bool, progress: Callable[[int], None] | None = None) -> dict:
    """Process one unit and write its shard (and index) under `out`; return its record.

    The record holds the shard's path, count, bytes and sha256, the rejects, the skipped and
    converted counts, and (with_stats) the exact statistics sums of the stored pixels.
    """
    if progress is None and _progress_counter is not None:
        def progress(n, _c=_progress_counter):
            with _c.get_lock():
                _c.value += n
    os.makedirs(os.path.join(out, unit.split), exist_ok=True)
    writer = ShardWriter(os.path.join(out, unit.path))
    acc = StatsAccumulator(size) if with_stats else None
    rejects, skipped, converted, n_converted = [], 0, {}, 0
    try:
        for key, item in unit.items:
            ref, label = item.ref, item.label
            try:
                data = source.read(item)
                jpeg, pixels, img = process_image(data, ref, size, quality)
            except NotAnImage:
                skipped += 1
            except (DecodeError, OSError) as exc:
                reason = str(exc) if isinstance(exc, DecodeError) else f"cannot read: {exc.strerror or exc}"
                rejects.append({"split": unit.split, "path": ref, "reason": reason})
            else:
                meta = {"source": ref, "class": classes[label]["name"], "label": label, "width": img.width,
                        "height": img.height, "format": img.format}
                if "wnid" in classes[label]:
                    meta["wnid"] = classes[label]["wnid"]
                if img.converted:
                    meta["converted"] = img.converted
                    n_converted += 1
                    for t in img.converted:
                        converted[t] = converted.get(t, 0) + 1
                writer.write(key, {"cls": str(label).encode(), "jpg": jpeg,
                                   "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()})
                if acc is not None:
                    acc.add(pixels)
            if progress is not None:
                progress(1)
        if writer.count == 0:
            writer.abort()
            shard = None
        else:
            info = writer.close()
            shard = {"path": unit.path, "count": info.count, "bytes": info.bytes, "sha256": info.sha256}
    except BaseException:
        writer.abort()
        raise
    return {"unit": unit.name, "split": unit.split, "shard": shard, "rejects": rejects, "skipped": skipped,
            "converted": converted, "converted_images": n_converted,
            "stats": acc.to_arrays() if acc is not None else None}


# ---------------------------------------------------------------------------------------------
# Driver: output-folder checks, resume state, execution, final files.


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _differences(saved: dict, wanted: dict) -> list[str]:
    flag = {"src": "SRC", "shard_size": "--shard-size"}
    return [f"{flag.get(k, '--' + k.replace('_', '-'))} was {saved.get(k)!r}, now {wanted.get(k)!r}"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]


def _check_out(cfg: PrepareConfig) -> str:
    """'new', 'resume' or 'complete'; raises if OUT holds something else."""
    out = cfg.out
    if not os.path.exists(out):
        return "new"
    if not os.path.isdir(out):
        raise ImgprepError(f"{out}: exists and is not a folder; choose another OUT")
    wanted = cfg.dataset_settings()
    for rel, state in ((C.MANIFEST, "complete"), (os.path.join(C.STATE_DIR, "config.json"), "resume")):
        p = os.path.join(out, rel)
        if os.path.exists(p):
            try:
                with open(p) as f:
                    saved = json.load(f)
                saved = saved.get("config", saved)
            except (OSError, ValueError):
                raise ImgprepError(f"{p}: unreadable; remove OUT or choose another folder") from None
            diff = _differences(saved, wanted)
            if diff:
                raise ImgprepError(f"{out} holds a dataset prepared with other settings ({'; '.join(diff)}); "
                                   "use the same settings to resume, or choose another OUT")
            return state
    if os.listdir(out):
        raise ImgprepError(f"{out}: not empty and not an imgprep dataset; choose an empty or new folder")
    return "new"


class _State:
    """Finished units and merged training statistics, saved atomically in one file."""

    def __init__(self, out: str, size: int):
        self.path = os.path.join(out, C.STATE_DIR, "state.npz")
        self.size = size
        self.records: dict[str, dict] = {}
        self.acc = StatsAccumulator(size)
        self._saved_at = -1e9

    def load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with np.load(self.path) as z:
                self.records = json.loads(str(z["records"]))
                self.acc = StatsAccumulator.from_arrays(z)
        except (OSError, ValueError, KeyError):
            self.records, self.acc = {}, StatsAccumulator(self.size)  # unreadable: redo everything

    def add(self, rec: dict) -> None:
        stats = rec.pop("stats")
        if stats is not None:
            self.acc.merge(StatsAccumulator.from_arrays(stats))
        self.records[rec["unit"]] = rec

    def save(self, min_interval: float = 0.0) -> None:
        """Write the state file, at most every `min_interval` seconds (a crash redoes at most
        that much work)."""
        now = time.monotonic()
        if now - self._saved_at < min_interval:
            return
        self._saved_at = now
        tmp = self.path + ".partial.npz"
        np.savez(tmp, records=np.array(json.dumps(self.records)), **self.acc.to_arrays())
        os.replace(tmp, self.path)


def _verify_records(state: _State, out: str) -> list[str]:
    """Drop recorded units whose shard is missing or altered. Returns the splits to redo whole
    (their statistics sums can no longer be trusted)."""
    bad_splits = set()
    for name, rec in list(state.records.items()):
        sh = rec["shard"]
        if sh is None:
            continue
        p = os.path.join(out, sh["path"])
        idx = p[:-4] + ".idx"
        if (not os.path.exists(p) or not os.path.exists(idx) or os.path.getsize(p) != sh["bytes"]
                or sha256_file(p) != sh["sha256"]):
            bad_splits.add(rec["split"])
    if "train" in bad_splits:
        state.acc = StatsAccumulator(state.size)
    for name, rec in list(state.records.items()):
        if rec["split"] in bad_splits:
            del state.records[name]
    return sorted(bad_splits)


def _remove_partials(out: str) -> None:
    for split in C.SPLITS:
        d = os.path.join(out, split)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.endswith(".partial"):
                    os.remove(os.path.join(d, name))


def prepare(cfg: PrepareConfig, progress: bool = True, log: Callable[[str], None] = print,
            executor=None) -> dict:
    """Run `prepare` end to end (or resume it). Returns a summary dict.

    Raises:
        ImgprepError: bad SRC, bad settings, or OUT holding something else.
    """
    cfg.validate()
    index = discover(cfg.src, cfg.split, cfg.layout, cfg.val_labels)
    state_kind = _check_out(cfg)
    out = cfg.out
    if state_kind == "complete":
        with open(os.path.join(out, C.MANIFEST)) as f:
            manifest = json.load(f)
        summary = _summary(manifest, 0.0, 0)
        summary["already_complete"] = True
        log(f"{out}: already complete with these settings ({summary['images']} images); nothing to do")
        return summary
    t0 = time.perf_counter()
    units = plan_units(index, cfg.shard_size, cfg.seed)
    os.makedirs(os.path.join(out, C.STATE_DIR), exist_ok=True)
    _write_atomic(os.path.join(out, C.STATE_DIR, "config.json"), _json_bytes(cfg.dataset_settings()))
    state = _State(out, cfg.size)
    if state_kind == "resume":
        state.load()
        redo = _verify_records(state, out)
        if redo:
            log(f"{out}: recorded shards of {', '.join(redo)} changed on disk; redoing those splits")
        _remove_partials(out)
    todo = [u for u in units if u.name not in state.records]
    if state_kind == "resume":
        log(f"resuming: {len(units) - len(todo)} of {len(units)} shards already done")
    workers = min(resolve_workers(cfg.workers), max(1, len(todo)))
    total = sum(len(u.items) for u in todo)
    bar = _progress_bar(total, progress)
    classes = [c.to_json(i) for i, c in enumerate(index.classes)]
    jobs = [(index.source, u, classes, out, cfg.size, cfg.quality, u.split == "train") for u in todo]

    def on_done(rec: dict) -> None:
        state.add(rec)
        state.save(min_interval=2.0)

    if executor is None:
        from .executors import make_executor

        executor = make_executor(cfg.executor, workers, cfg.ray_address)
    try:
        executor.run(jobs, on_done, bar.update)
    except BaseException as exc:
        bar.close()
        state.save()  # keep every finished unit for the rerun
        if isinstance(exc, KeyboardInterrupt):
            raise ImgprepError(f"interrupted; {len(state.records)} of {len(units)} shards are done; "
                               "run the same command again to resume") from None
        raise
    bar.close()
    manifest = _finish(cfg, index, units, state)
    seconds = time.perf_counter() - t0
    summary = _summary(manifest, seconds, total)
    log(_summary_line(summary, out))
    return summary


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread polling in the driver

    return tqdm(total=total, unit="img", disable=not enabled, smoothing=0.1, dynamic_ncols=True,
                desc="prepare")


def _finish(cfg: PrepareConfig, index: SourceIndex, units: list[Unit], state: _State) -> dict:
    """Write stats, rejects and manifest (last) from the state; remove the state folder."""
    out = cfg.out
    recs = [state.records[u.name] for u in units]
    if "train" in index.splits and state.acc.images > 0:
        st = finalize(state.acc)
        os.makedirs(os.path.join(out, C.STATS_DIR), exist_ok=True)
        tmp = os.path.join(out, C.STATS_DIR, "mean.partial.npy")
        np.save(tmp, st.mean_image)
        os.replace(tmp, os.path.join(out, C.STATS_DIR, C.MEAN_FILE))
        _write_atomic(os.path.join(out, C.STATS_DIR, C.STATS_FILE), _json_bytes({**st.to_json(), "size": cfg.size}))
    rejects = [r for rec in recs for r in rec["rejects"]]
    _write_atomic(os.path.join(out, C.REJECTS), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    splits = {}
    for split, items in index.splits.items():
        rs = [r for r in recs if r["split"] == split]
        if not rs:
            continue
        converted: dict[str, int] = {}
        for r in rs:
            for k, v in r["converted"].items():
                converted[k] = converted.get(k, 0) + v
        shards = [r["shard"] for r in rs if r["shard"] is not None]
        splits[split] = {
            "count": sum(s["count"] for s in shards),
            "files": len(items),
            "shards": shards,
            "converted": sum(r["converted_images"] for r in rs),
            "conversions": dict(sorted(converted.items())),
            "skipped": index.skipped.get(split, 0) + sum(r["skipped"] for r in rs),
            "rejected": sum(len(r["rejects"]) for r in rs),
        }
    manifest = {
        "format": "imgprep-webdataset",
        "format_version": C.FORMAT_VERSION,
        "config": cfg.dataset_settings(),
        "source_layout": index.layout,
        "classes": [c.to_json(i) for i, c in enumerate(index.classes)],
        "splits": splits,
        "sample": {"jpg": f"JPEG {cfg.size}x{cfg.size} RGB, quality {cfg.quality}",
                   "cls": "class index, ASCII decimal", "json": "source path, original size, class name"},
        "stats": f"{C.STATS_DIR}/{C.STATS_FILE}" if "train" in splits else None,
    }
    _write_atomic(os.path.join(out, C.MANIFEST), _json_bytes(manifest))
    shutil.rmtree(os.path.join(out, C.STATE_DIR), ignore_errors=True)
    return manifest


def _summary(manifest: dict, seconds: float, processed: int) -> dict:
    splits = manifest["splits"]
    images = sum(s["count"] for s in splits.values())
    return {
        "images": images,
        "splits": {k: {"count": v["count"], "shards": len(v["shards"])} for k, v in splits.items()},
        "rejected": sum(s["rejected"] for s in splits.values()),
        "skipped": sum(s["skipped"] for s in splits.values()),
        "converted": sum(s["converted"] for s in splits.values()),
        "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        "already_complete": False,
    }


def _summary_line(s: dict, out: str) -> str:
    parts = ", ".join(f"{k} {v['count']:,} in {v['shards']} shard{'s' * (v['shards'] != 1)}"
                      for k, v in s["splits"].items())
    return (f"prepared {s['images']:,} images ({parts}); {s['converted']:,} converted, {s['rejected']:,} rejected "
            f"(see {C.REJECTS}), {s['skipped']:,} skipped; {s['seconds']:.1f} s, "
            f"{s['images_per_second'] or 0:,.0f} img/s -> {out}")
