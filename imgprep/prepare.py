"""`imgprep prepare`: source images to shuffled WebDataset shards, with the training statistics
computed in the same pass.

The work is split into independent units, one per output shard. A unit decodes, resizes, crops and
re-encodes its images, writes its shard and index, and returns its counts and exact statistics
sums; the driver merges those, records each finished unit in a state file (so a rerun resumes),
and writes the statistics, the reject list and the manifest at the end. Where there are fewer
units than the workers can share, they are cut into pieces run as jobs of their own, shrinking as
the run goes (`split_jobs`), and the driver writes each shard from its pieces' samples in order:
the bytes are the same.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ._mp import resolve_workers
from .codec import decode_rgb, encode_jpeg
from .config import SEED_MIN, Settings, check_settings, setting
from .constants import (
    JPEG_QUALITY,
    MAX_PIXELS,
    MAX_PIXELS_CEILING,
    MAX_STORED_SIZE,
    SHARD_SIZE,
    SPLITS,
    STORED_SIZE,
)
from .dataset import (
    FORMAT_NAME,
    MANIFEST,
    REJECTS,
    build_manifest,
    open_dataset,
    read_manifest,
    write_manifest,
    write_rejects,
    write_stats,
)
from .errors import DecodeError, ImgprepError, NotAnImage
from .executors import EXECUTORS, LocalExecutor, make_executor
from .fileio import PARTIAL_SUFFIX, FolderLock, atomic_file, is_url, json_bytes, partial_path, write_atomic
from .geometry import Scratch, resize_center_crop
from .shards import Fragment, ShardWriter, index_path, sha256_file
from .sources import LAYOUTS, Item, Source, SourceIndex, discover
from .stats import StatsAccumulator, finalize

__all__ = ["PrepareConfig", "Unit", "UnitJob", "plan_units", "process_image", "run_unit", "prepare"]

STATE_DIR = ".imgprep"  # per-unit completion records, kept for resume and merged at the end


@dataclass(frozen=True)
class PrepareConfig(Settings):
    """Settings of one `prepare` run. All but `workers` define the output."""

    src: str
    out: str
    split: str = setting("train", "Split of SRC when it is a plain folder of class folders.", choices=SPLITS)
    layout: str = setting(
        "auto", "Source layout; auto detects ILSVRC2012 archives, Kaggle, class folders.", choices=LAYOUTS
    )
    val_labels: str | None = setting(
        None,
        "Labels of a flat validation folder (or val tar): one WNID per line in file-name order, or CSV file,wnid.",
        path=True,
    )
    size: int = setting(
        STORED_SIZE, "Shorter side after resizing, and side of the centre crop.", min=8, max=MAX_STORED_SIZE
    )
    quality: int = setting(JPEG_QUALITY, "JPEG quality.", min=1, max=100)
    shard_size: int = setting(SHARD_SIZE, "Samples per shard.", min=1)
    seed: int = setting(0, "Seed of the global shuffle.", min=SEED_MIN)
    max_pixels: int = setting(
        MAX_PIXELS,
        "Refuse (list in rejects.jsonl) an image with more pixels, read from its "
        "header before decoding: bounds the memory of one image.",
        min=1,
        max=MAX_PIXELS_CEILING,
    )
    workers: int = setting(0, "Worker processes (0: all cores, or the CPUs of the local Ray instance).", min=0)
    executor: str = setting(
        "local", "Run the units (one per shard) in a local process pool or as Ray tasks.", choices=EXECUTORS
    )
    ray_address: str | None = setting(
        None,
        "Ray cluster to use (e.g. auto, ray://head:10001); default: start a local Ray instance with --workers CPUs.",
    )

    def dataset_settings(self) -> dict:
        """The settings that determine the output bytes (compared on rerun); not how they are run."""
        d = asdict(self)
        for k in ("workers", "out", "executor", "ray_address"):
            d.pop(k)
        d["src"] = self.src if is_url(self.src) else os.path.abspath(self.src)
        if self.val_labels:
            d["val_labels"] = os.path.abspath(self.val_labels)
        return d

    def validate(self) -> None:
        """Raise ImgprepError on bad settings (each is also checked against its declaration on construction)."""
        check_settings(self)


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
    for split_no, split in enumerate(SPLITS):
        items = index.splits.get(split)
        if not items:
            continue
        perm = np.random.default_rng([seed, split_no]).permutation(len(items))
        # Keys are the shuffled position: unique, dot-free, and sorted in shard order.
        rows = [(f"{pos:08d}", items[i]) for pos, i in enumerate(perm)]
        for u, start in enumerate(range(0, len(rows), shard_size)):
            units.append(Unit(split, u, rows[start : start + shard_size]))
    return units


def process_image(
    data: bytes, name: str, size: int, quality: int, max_pixels: int | None = MAX_PIXELS, scratch: Scratch | None = None
):
    """Decode, resize the shorter side to `size`, centre-crop, re-encode.

    Returns:
        (jpeg bytes, stored pixels uint8 (size, size, 3), DecodedImage); with `scratch` (one
        worker's reused arrays) the pixels of both live in it, valid until its next use.
    Raises:
        DecodeError, NotAnImage.
    """
    img = decode_rgb(data, name, min_side=size, max_pixels=max_pixels, scratch=scratch)
    pixels = resize_center_crop(img.pixels, size, scratch)
    return encode_jpeg(pixels, quality, scratch), pixels, img


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to process one unit (and nothing of the driver)."""

    source: Source
    unit: Unit
    classes: list[dict]  # manifest class records, by label
    out: str
    size: int
    quality: int
    with_stats: bool  # accumulate the training statistics
    max_pixels: int = MAX_PIXELS
    upload_to: str = ""  # OUT in a bucket: the shard is written in a private folder, then put there
    aws_env: dict | None = None  # the driver's AWS_* settings: a worker started earlier, or elsewhere, has them too
    piece: tuple[int, int] | None = None  # [start, stop) of unit.items, for a piece of the unit (`split_jobs`)
    spill: bool = False  # a piece's bytes go to a file beside its shard (`piece_path`), not back in the record

    @property
    def name(self) -> str:
        return f"unit {self.unit.name}" + ("" if self.piece is None else f" [{self.piece[0]}:{self.piece[1]}]")

    @property
    def weight(self) -> int:
        return len(self.unit.items) if self.piece is None else self.piece[1] - self.piece[0]


def _sample_meta(item: Item, img, classes: list[dict]) -> dict:
    cls = classes[item.label]
    meta = {
        "source": item.ref,
        "class": cls["name"],
        "label": item.label,
        "width": img.width,
        "height": img.height,
        "format": img.format,
    }
    if "wnid" in cls:
        meta["wnid"] = cls["wnid"]
    if img.converted:
        meta["converted"] = img.converted
    return meta


def _max_file_bytes(max_pixels: int) -> int:
    """No image file needs more than 4 bytes per pixel (uncompressed RGBA) plus its headers."""
    return 4 * max_pixels + (1 << 20)


def run_unit(job: UnitJob, progress: Callable[[int], None] | None = None) -> dict:
    """Process one unit and write its shard (and index) under `job.out`; return its record.

    The record holds the shard's path, count, bytes and sha256, the rejects, the skipped and
    converted counts, and (with_stats) the exact statistics sums of the stored pixels. A piece of
    a unit (`job.piece`) writes no shard: its record holds its samples as tar members (a `Fragment`,
    its bytes in a file at `piece_path` with `job.spill`), in order, for the driver to append to
    the unit's shard after the pieces before it (`_Pieces`).
    """
    tally = _Tally(job)
    if job.piece is not None:
        start, stop = job.piece
        frag = Fragment()
        for key, components in _samples(job, job.unit.items[start:stop], tally, progress):
            frag.add(key, components)
        if job.spill:
            path = piece_path(job)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                frag.spill(path)
            except OSError as exc:
                raise _write_error(exc, path) from None
        return {"unit": job.unit.name, "piece": [start, stop], "fragment": frag, **tally.record()}
    with _unit_out(job) as out:
        samples = _samples(job, job.unit.items, tally, progress)
        return _write_shard(job, out, (Fragment.of(key, components) for key, components in samples), tally)


def piece_path(job: UnitJob) -> str:
    """Where a spilled piece's bytes wait for the driver: beside the unit's shard, hidden and named
    as a partial file (a run stopped before its shard was written leaves it for the resume to remove)."""
    d, base = os.path.split(os.path.join(job.out, job.unit.path))
    return partial_path(os.path.join(d, f"{base}.piece-{job.piece[0]:07d}"))


@contextlib.contextmanager
def _unit_out(job: UnitJob):
    """Where a unit's shard is written: OUT, or (OUT in a bucket) a private temporary folder of
    this process, removed once the shard is put."""
    if not job.upload_to:
        yield job.out
        return
    out = tempfile.mkdtemp(prefix="imgprep-unit-")
    try:
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _reads(source, items: list[Item], limit: int):
    """Per item, a call that returns its bytes (or raises its read error), in order: the source's
    own `reads` where it has one (a bucket: several requests in flight), else one read at a time."""
    if hasattr(source, "reads"):
        yield from source.reads(items, limit)
        return
    for item in items:
        yield functools.partial(source.read, item, max_bytes=limit)


class _Tally:
    """What a unit (or a piece of one) counts besides its samples: rejects, skipped and converted
    files, and the statistics sums."""

    def __init__(self, job: UnitJob):
        self.rejects, self.skipped, self.converted, self.n_converted = [], 0, {}, 0
        self.acc = StatsAccumulator(job.size) if job.with_stats else None

    def merge(self, rec: dict) -> None:
        """Add a piece's record (its counts and sums) to this tally."""
        self.rejects += rec["rejects"]
        self.skipped += rec["skipped"]
        self.n_converted += rec["converted_images"]
        for t, n in rec["converted"].items():
            self.converted[t] = self.converted.get(t, 0) + n
        if self.acc is not None:
            self.acc.merge(StatsAccumulator.from_arrays(rec["stats"]))

    def record(self) -> dict:
        return {
            "rejects": self.rejects,
            "skipped": self.skipped,
            "converted": self.converted,
            "converted_images": self.n_converted,
            "stats": self.acc.to_arrays() if self.acc is not None else None,
        }


def _samples(job: UnitJob, rows: list[tuple[str, Item]], tally: _Tally, progress):
    """(key, components) of each row's image that decodes, in order; the others counted in `tally`."""
    limit = _max_file_bytes(job.max_pixels)
    reads = _reads(job.source, [item for _, item in rows], limit)
    scratch = Scratch()  # each image's pixels are done with (statistics added) before the next's
    for (key, item), read in zip(rows, reads, strict=True):
        try:
            data = read()
            jpeg, pixels, img = process_image(data, item.ref, job.size, job.quality, job.max_pixels, scratch)
        except NotAnImage:
            tally.skipped += 1
        except (DecodeError, OSError) as exc:
            reason = str(exc) if isinstance(exc, DecodeError) else f"cannot read: {exc.strerror or exc}"
            tally.rejects.append({"split": job.unit.split, "path": item.ref, "reason": reason})
        else:
            meta = _sample_meta(item, img, job.classes)
            tally.n_converted += bool(img.converted)
            for t in img.converted:
                tally.converted[t] = tally.converted.get(t, 0) + 1
            if tally.acc is not None:
                tally.acc.add(pixels)
            yield (
                key,
                {
                    "cls": str(item.label).encode(),
                    "jpg": jpeg,
                    "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
                },
            )
        if progress is not None:
            progress(1)


def _write_shard(job: UnitJob, out: str, fragments, tally: _Tally) -> dict:
    """Write the samples of `fragments`, in order, as the unit's shard (and index) under `out`, put
    it in the bucket where OUT is one; the unit's record."""
    unit = job.unit
    path = os.path.join(out, unit.path)
    try:
        os.makedirs(os.path.join(out, unit.split), exist_ok=True)
        writer = ShardWriter(path)
    except OSError as exc:
        raise _write_error(exc, path) from None
    try:
        for frag in fragments:
            writer.write_fragment(frag)
        if writer.count == 0:
            writer.abort()
            shard = None
        else:
            info = writer.close()
            shard = {
                "path": unit.path,
                "count": info.count,
                "bytes": info.bytes,
                "sha256": info.sha256,
                "sample_crc32": info.sample_crc32,
            }
    except OSError as exc:  # the source's errors became rejects: this is writing the shard
        writer.abort()
        raise _write_error(exc, path) from None
    except BaseException:
        writer.abort()
        raise
    md5 = None
    if job.upload_to and shard is not None:  # from this process straight to the bucket, checked there
        from . import bucket_out  # here: a local run never imports the HTTP client

        md5 = bucket_out.upload_shard(
            job.upload_to, out, unit.path, os.path.relpath(index_path(path), out), job.aws_env or {}
        )
    return {"md5": md5, "unit": unit.name, "split": unit.split, "shard": shard, **tally.record()}


# Work units finer than shards: with fewer than PIECES_PER_WORKER units per worker, the units are cut
# into pieces run as jobs of their own; the driver writes each shard when its last piece is in, from
# the pieces' samples in order, so the bytes are those of one job. The pieces shrink as the run goes
# (guided self-scheduling): each is half of an equal share of what is left, down to 1/(2 *
# PIECES_PER_WORKER) of a worker's share, so the first ones are few and large and the workers end
# within a small piece of each other; the largest units go first, so the shard the driver writes
# alone at the end is the smallest.
PIECES_PER_WORKER = 4
MIN_PIECE = 16


def piece_bounds(sizes: list[int], workers: int) -> list[list[tuple[int, int]]]:
    """Per unit of `sizes` images (in the order they run), its pieces' [start, stop): the guided
    sizes laid over all the units' images end to end and cut at the units' ends, no piece under
    MIN_PIECE (a unit under 2 * MIN_PIECE stays whole)."""
    total = sum(sizes)
    floor = max(MIN_PIECE, total // (2 * PIECES_PER_WORKER * workers))
    cuts, at = [], 0
    while at < total:  # the global cut points of the guided sizes
        at = min(total, at + max(floor, (total - at) // (2 * workers)))
        cuts.append(at)
    out, start = [], 0
    for n in sizes:
        keep = [0]
        for c in cuts:
            if not start < c < start + n:
                continue
            b = max(c - start, keep[-1] + MIN_PIECE)  # a bit left over from the unit before: moved
            if n - b >= MIN_PIECE:  # a bit before the next unit: joined
                keep.append(b)
        out.append(list(zip(keep, keep[1:] + [n], strict=True)))
        start += n
    return out


def split_jobs(jobs: list[UnitJob], workers: int, spill: bool = False) -> list[UnitJob]:
    """The jobs to run: `jobs` as they are where there are enough of them for `workers`, else
    the largest units first, each cut into the pieces of `piece_bounds` (`UnitJob.piece`; `spill`:
    `UnitJob.spill`)."""
    if workers <= 1 or len(jobs) >= PIECES_PER_WORKER * workers:
        return jobs
    jobs = sorted(jobs, key=lambda j: -len(j.unit.items))  # stable: equal units keep their order
    out = []
    for job, pieces in zip(jobs, piece_bounds([len(j.unit.items) for j in jobs], workers), strict=True):
        if len(pieces) == 1:
            out.append(job)
        else:
            out += [replace(job, piece=p, spill=spill) for p in pieces]
    return out


class _Pieces:
    """The driver's side of pieces: each unit's piece records until the last is in, then its
    shard written (and put in the bucket) here and the unit's record handed on."""

    def __init__(self, jobs: list[UnitJob], on_unit: Callable[[dict], None]):
        self.jobs = {j.unit.name: j for j in jobs}
        self.expected = collections.Counter(j.unit.name for j in jobs)
        self.got: dict[str, list[dict]] = {}
        self.on_unit = on_unit

    def __call__(self, rec: dict) -> None:
        if "piece" not in rec:
            self.on_unit(rec)
            return
        name = rec["unit"]
        parts = self.got.setdefault(name, [])
        parts.append(rec)
        if len(parts) < self.expected[name]:
            return
        del self.got[name]
        parts.sort(key=lambda r: r["piece"][0])
        job = replace(self.jobs[name], piece=None)
        tally = _Tally(job)
        for r in parts:
            tally.merge(r)
        try:
            with _unit_out(job) as out:
                rec = _write_shard(job, out, (r["fragment"] for r in parts), tally)
        finally:
            for r in parts:
                if r["fragment"].path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(r["fragment"].path)
        self.on_unit(rec)


# ---------------------------------------------------------------------------------------------
# Driver: output-folder checks, resume state, execution, final files.


# settings added after format 1; an OUT written before them used their defaults
_LATER_SETTINGS = {"max_pixels": MAX_PIXELS}


def _differences(saved: dict, wanted: dict) -> list[str]:
    saved = {**_LATER_SETTINGS, **saved}
    flag = {"src": "SRC", "shard_size": "--shard-size"}
    return [
        f"{flag.get(k, '--' + k.replace('_', '-'))} was {saved.get(k)!r}, now {wanted.get(k)!r}"
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    ]


def _settings_state(read, where: str, wanted: dict, choose: str) -> str | None:
    """'complete' or 'resume' where OUT (a folder or a bucket prefix: `read(rel)` gives the bytes of
    OUT/rel, None where it does not exist) holds a dataset of these settings, or an unfinished run
    of them; None where it holds neither; raises where it holds another dataset or run."""
    for rel, state in ((MANIFEST, "complete"), (f"{STATE_DIR}/config.json", "resume")):
        data = read(rel)
        if data is None:
            continue
        p = f"{where}/{rel}"
        try:
            saved = json.loads(data)
        except ValueError:
            raise ImgprepError(f"{p}: unreadable; remove it or choose {choose}") from None
        if state == "complete":
            if not isinstance(saved, dict) or saved.get("format") != FORMAT_NAME:
                raise ImgprepError(f"{where}: its {MANIFEST} is not an imgprep dataset's; choose {choose}")
            saved = saved.get("config")
        if not isinstance(saved, dict) or not {"src", "size", "seed"} <= set(saved):
            raise ImgprepError(f"{p}: not the settings of an imgprep dataset; choose {choose}")
        saved = {k: v for k, v in saved.items() if k != "source_listing_sha256"}  # compared on resume
        diff = _differences(saved, wanted)
        if diff:
            raise ImgprepError(
                f"{where} holds a dataset prepared with other settings ({'; '.join(diff)}); "
                f"use the same settings to resume, or choose {choose}"
            )
        return state
    return None


def _output_state(cfg: PrepareConfig, bucket=None) -> str:
    """What OUT (or the bucket prefix) holds: 'new', 'resume' (an unfinished run) or 'complete';
    raises if something else."""
    if bucket is not None:
        state = _settings_state(bucket.read, bucket.url, cfg.dataset_settings(), "another prefix")
        if state is None and not bucket.is_empty():
            raise ImgprepError(f"{bucket.url}: not empty and not an imgprep dataset; choose an empty or new prefix")
        return state or "new"
    out = cfg.out
    if not os.path.exists(out):
        return "new"

    def read(rel: str) -> bytes | None:
        p = os.path.join(out, rel)
        if not os.path.exists(p):
            return None
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError:
            raise ImgprepError(f"{p}: unreadable; remove it or choose an empty or new OUT") from None

    state = _settings_state(read, out, cfg.dataset_settings(), "an empty or new OUT")
    if state is None and os.listdir(out):
        raise ImgprepError(f"{out}: not empty and not an imgprep dataset; choose an empty or new folder")
    return state or "new"


class _State:
    """Finished units and merged training statistics, saved atomically in one file."""

    def __init__(self, out: str, size: int):
        self.path = os.path.join(out, STATE_DIR, "state.npz")
        self.size = size
        self.records: dict[str, dict] = {}
        self.acc = StatsAccumulator(size)
        self._saved_at = -1e9

    def load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with np.load(self.path, allow_pickle=False) as z:
                self.records = json.loads(str(z["records"]))
                self.acc = StatsAccumulator.from_arrays(z)
        except (OSError, ValueError, KeyError):
            self.records, self.acc = {}, StatsAccumulator(self.size)  # unreadable: redo everything

    def add(self, rec: dict) -> None:
        stats = rec.pop("stats")
        if stats is not None:
            self.acc.merge(StatsAccumulator.from_arrays(stats))
        self.records[rec["unit"]] = rec

    def save(self, min_interval: float = 0.0) -> bool:
        """Write the state file, at most every `min_interval` seconds (a crash redoes at most
        that much work); whether it was written."""
        now = time.monotonic()
        if now - self._saved_at < min_interval:
            return False
        self._saved_at = now
        with atomic_file(self.path) as f:
            np.savez(f, records=np.array(json.dumps(self.records)), **self.acc.to_arrays())
        return True


def _verify_records(state: _State, out: str) -> list[str]:
    """Drop recorded units whose shard is missing or altered. Returns the splits to redo whole
    (their statistics sums can no longer be trusted)."""
    bad_splits = set()
    for rec in state.records.values():
        sh = rec["shard"]
        if sh is None:
            continue
        p = os.path.join(out, sh["path"])
        if (
            not os.path.exists(p)
            or not os.path.exists(index_path(p))
            or os.path.getsize(p) != sh["bytes"]
            or sha256_file(p) != sh["sha256"]
        ):
            bad_splits.add(rec["split"])
    return _drop_splits(state, bad_splits)


def _drop_splits(state: _State, bad_splits: set[str]) -> list[str]:
    """Drop the records of `bad_splits` (and the training sums with train's)."""
    if "train" in bad_splits:
        state.acc = StatsAccumulator(state.size)
    for name, rec in list(state.records.items()):
        if rec["split"] in bad_splits:
            del state.records[name]
    return sorted(bad_splits)


def _remove_partials(out: str) -> None:
    for split in SPLITS:
        d = os.path.join(out, split)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.endswith(PARTIAL_SUFFIX):
                    os.remove(os.path.join(d, name))


def _listing_changed(out: str, listing: str) -> bool:
    """Whether an unfinished run's plan was made from another SRC listing (files added, removed,
    renamed, resized or rewritten since): its finished shards hold another shuffle's samples."""
    try:
        with open(os.path.join(out, STATE_DIR, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("source_listing_sha256") != listing
    except (OSError, ValueError, AttributeError):
        return True


def _remove_shards(out: str) -> None:
    """Remove the shards and index files an unfinished run wrote (names of our own only)."""
    for split in SPLITS:
        d = os.path.join(out, split)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.startswith(f"{split}-") and name.endswith((".tar", ".idx", PARTIAL_SUFFIX)):
                    os.remove(os.path.join(d, name))


def _open_state(cfg: PrepareConfig, kind: str, units: list[Unit], listing: str, log, bucket=None) -> _State:
    """The resume state of OUT (empty for a new run), with damaged records dropped. A run whose SRC
    listing changed since it was interrupted starts over: its shards belong to another plan.
    `bucket`: OUT in a bucket (`cfg.out` is then its local staging folder)."""
    state_cfg = os.path.join(cfg.out, STATE_DIR, "config.json")
    if kind == "resume" and _listing_changed(cfg.out, listing):
        log(f"{cfg.src}: files changed since the interrupted run (the listing differs); starting over")
        # (an interrupted run of a version that recorded no listing starts over too: nothing proves its plan)
        shutil.rmtree(os.path.join(cfg.out, STATE_DIR))
        _remove_shards(cfg.out)
        _remove_partials(cfg.out)  # hidden: a shard or piece that run was writing when it stopped
        kind = "new"
    os.makedirs(os.path.join(cfg.out, STATE_DIR), exist_ok=True)
    write_atomic(state_cfg, json_bytes({**cfg.dataset_settings(), "source_listing_sha256": listing}))
    state = _State(cfg.out, cfg.size)
    if bucket is not None:
        bucket.push_state()
    if kind == "resume":
        state.load()
        redo = (
            _verify_records(state, cfg.out)
            if bucket is None
            else _drop_splits(state, bucket.verify_records(state.records))
        )
        if redo:
            log(f"{cfg.out}: recorded shards of {', '.join(redo)} changed on disk; redoing those splits")
        _remove_partials(cfg.out)
        log(f"resuming: {sum(u.name in state.records for u in units)} of {len(units)} shards already done")
    return state


def prepare(cfg: PrepareConfig, progress: bool = True, log: Callable[[str], None] = print, executor=None) -> dict:
    """Run `prepare` end to end (or resume it). Returns a summary dict.

    Raises:
        ImgprepError: bad SRC, bad settings, or OUT holding something else.
    """
    cfg.validate()
    if is_url(cfg.out):
        return _prepare_to_bucket(cfg, progress, log, executor)
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ImgprepError(f"{cfg.out}: exists and is not a folder; choose another OUT")
    created = not os.path.exists(cfg.out)
    try:
        # made before SRC is listed, so that an OUT inside SRC is left out of it on every run alike
        # (removed again below when SRC is refused)
        os.makedirs(cfg.out, exist_ok=True)
        index = _sources(cfg, cfg.out)  # OUT left out
        with FolderLock(cfg.out, "OUT"):  # one writer per OUT, for the whole run
            return _prepare_into(cfg, index, progress, log, executor)
    except OSError as exc:  # reading errors are rejects, so this is writing OUT: disk full, permissions
        raise _write_error(exc, cfg.out) from None
    finally:
        if created and os.path.isdir(cfg.out) and not os.listdir(cfg.out):  # refused before anything was written
            os.rmdir(cfg.out)


def _sources(cfg: PrepareConfig, out: str) -> SourceIndex:
    """The index of SRC: a folder (never entering `out`), or an s3:// prefix (`bucket_src`)."""
    if is_url(cfg.src):
        from .bucket_src import discover_bucket

        return discover_bucket(cfg.src, cfg.split, cfg.layout, cfg.val_labels)
    return discover(cfg.src, cfg.split, cfg.layout, cfg.val_labels, out)


def _prepare_to_bucket(cfg: PrepareConfig, progress: bool, log, executor) -> dict:
    """OUT at an s3:// URL (`bucket_out`): the run in a local staging folder, shards put by the
    processes that make them, the manifest put last."""
    from . import bucket_out

    bucket = bucket_out.BucketOut(cfg.out)
    stage = replace(cfg, out=bucket.stage)
    try:
        bucket.make_stage()
        index = _sources(cfg, bucket.stage)
        with FolderLock(bucket.stage, "the staging folder of OUT"):  # one writer per OUT on this machine
            return _prepare_into(stage, index, progress, log, executor, bucket)
    except OSError as exc:
        raise _write_error(exc, bucket.stage) from None


def _write_error(exc: OSError, where: str) -> ImgprepError:
    return ImgprepError(
        f"{exc.filename or where}: cannot write ({exc.strerror or exc}); free space or fix "
        "permissions there, then run the same command again to resume"
    )


def _prepare_into(cfg: PrepareConfig, index: SourceIndex, progress: bool, log, executor, bucket=None) -> dict:
    """The run into `cfg.out`, or (bucket) into its staging folder and the bucket, holding the
    prefix's lock (`BucketOut.locked`)."""
    where = cfg.out if bucket is None else bucket.url
    kind = _output_state(cfg, bucket)
    if kind != "complete" and bucket is not None:
        with bucket.locked(log):
            kind = _output_state(cfg, bucket)  # again, as the lock's holder: another run may have ended meanwhile
            if kind != "complete":
                return _run(cfg, index, kind, progress, log, executor, bucket)
    elif kind != "complete":
        return _run(cfg, index, kind, progress, log, executor)
    manifest = read_manifest(cfg.out) if bucket is None else open_dataset(bucket.url).manifest
    summary = {**_summary(manifest, 0.0, 0), "already_complete": True}
    log(f"{where}: already complete with these settings ({summary['images']} images); nothing to do")
    return summary


def _run(cfg: PrepareConfig, index: SourceIndex, kind: str, progress: bool, log, executor, bucket=None) -> dict:
    """A new or resumed run: the units not done yet, then the final files."""
    where = cfg.out if bucket is None else bucket.url
    t0 = time.perf_counter()
    units = plan_units(index, cfg.shard_size, cfg.seed)
    if bucket is not None and kind == "resume":
        bucket.pull_state()  # this machine may not be the one that started the run
    state = _open_state(cfg, kind, units, index.listing_digest(), log, bucket)
    todo = [u for u in units if u.name not in state.records]
    classes = [c.to_json(i) for i, c in enumerate(index.classes)]
    upload = bucket.url if bucket is not None else ""
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")} if bucket is not None else None
    jobs = [
        UnitJob(
            index.source, u, classes, cfg.out, cfg.size, cfg.quality, u.split == "train", cfg.max_pixels, upload, aws
        )
        for u in todo
    ]
    total = sum(job.weight for job in jobs)
    local = cfg.executor == "local"
    workers = resolve_workers(cfg.workers, bound=local) if executor is None else getattr(executor, "workers", 1)
    # pieces where there are fewer units than the workers can share; their bytes spilled to files
    # where the workers are processes of this machine writing into the OUT folder
    spill = bucket is None and (isinstance(executor, LocalExecutor) if executor is not None else local)
    jobs = split_jobs(jobs, workers, spill)
    if executor is None:
        fork_ok = bucket is None and not is_url(cfg.src)  # no store connection a forked worker would share
        executor = make_executor(cfg.executor, min(workers, max(1, len(jobs))), cfg.ray_address, fork_ok)

    def on_done(rec: dict) -> None:
        state.add(rec)
        if state.save(min_interval=2.0 if bucket is None else 10.0) and bucket is not None:
            bucket.push_state()

    bar = _progress_bar(total, progress)
    try:
        executor.run(run_unit, jobs, _Pieces(jobs, on_done), bar.update)
    except BaseException as exc:
        with contextlib.suppress(OSError, ImgprepError):  # keep every finished unit for the rerun (if we can)
            state.save()
            if bucket is not None:
                bucket.push_state()
        with contextlib.suppress(OSError):  # the pool has stopped: the pieces of unfinished shards go too
            _remove_partials(cfg.out)
        if isinstance(exc, KeyboardInterrupt):
            raise ImgprepError(
                f"interrupted; {len(state.records)} of {len(units)} shards are done; "
                "run the same command again to resume"
            ) from None
        raise
    finally:
        bar.close()
    manifest = _finish(cfg, index, units, state)
    if bucket is not None:
        bucket.commit()
    summary = _summary(manifest, time.perf_counter() - t0, total)
    log(_summary_line(summary, where))
    return summary


def _progress_bar(total: int, enabled: bool):
    from .progress import progress_bar

    return progress_bar(total, "prepare", "img", enabled)


def _split_record(items: list[Item], records: list[dict], skipped_in_index: int) -> dict:
    """The manifest entry of one split from its units' records."""
    converted: dict[str, int] = {}
    for r in records:
        for k, v in r["converted"].items():
            converted[k] = converted.get(k, 0) + v
    shards = [r["shard"] for r in records if r["shard"] is not None]
    return {
        "count": sum(s["count"] for s in shards),
        "files": len(items),
        "shards": shards,
        "converted": sum(r["converted_images"] for r in records),
        "conversions": dict(sorted(converted.items())),
        "skipped": skipped_in_index + sum(r["skipped"] for r in records),
        "rejected": sum(len(r["rejects"]) for r in records),
    }


def _finish(cfg: PrepareConfig, index: SourceIndex, units: list[Unit], state: _State) -> dict:
    """Write stats, rejects and manifest (last) from the state; remove the state folder."""
    recs = [state.records[u.name] for u in units]
    if "train" in index.splits and state.acc.images > 0:
        write_stats(cfg.out, finalize(state.acc), cfg.size)
    write_rejects(cfg.out, [r for rec in recs for r in rec["rejects"]])
    splits = {}
    for split, items in index.splits.items():
        rs = [r for r in recs if r["split"] == split]
        if rs:
            splits[split] = _split_record(items, rs, index.skipped.get(split, 0))
    classes = [c.to_json(i) for i, c in enumerate(index.classes)]
    manifest = build_manifest(cfg.dataset_settings(), index.layout, classes, splits, cfg.size, cfg.quality)
    write_manifest(cfg.out, manifest)
    shutil.rmtree(os.path.join(cfg.out, STATE_DIR), ignore_errors=True)
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
    parts = ", ".join(
        f"{k} {v['count']:,} in {v['shards']} shard{'s' * (v['shards'] != 1)}" for k, v in s["splits"].items()
    )
    return (
        f"prepared {s['images']:,} images ({parts}); {s['converted']:,} converted, {s['rejected']:,} rejected "
        f"(see {REJECTS}), {s['skipped']:,} skipped; {s['seconds']:.1f} s, "
        f"{s['images_per_second'] or 0:,.0f} img/s -> {out}"
    )
