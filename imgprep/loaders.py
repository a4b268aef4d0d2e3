"""Loaders: prepared shards to `(images, labels)` batches with the paper's augmentation.

`make_loader(...)` is the public factory. Two backends share one epoch plan (this module):
- "dali" (default): one DALI pipeline, decoding on the GPU ("mixed") where there is one and on
  the CPU where there is none (`imgprep.dali_loader`).
- "torch": webdataset + `torch.utils.data.DataLoader` workers, the same semantics
  (`imgprep.torch_loader`).

Epoch plan, identical for both backends and all ranks:
- the shard order is permuted with (seed, epoch); the samples of the concatenated shards are
  split into `world_size` contiguous ranges, rank r taking [r*N//W, (r+1)*N//W) (DALI's rule);
- within its range a rank shuffles in a buffer (train mode);
- every rank yields the same number of batches: `last_batch="pad"` (default) yields
  ceil(ceil(N/W)/B) batches, padding with label -1 (ignored by the trainer's loss and metrics),
  so that together the ranks cover every sample exactly once; `last_batch="drop"` yields
  floor(floor(N/W)/B) full batches and leaves the rest out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from . import constants as C
from .augment import NORMALIZE
from .errors import ImgprepError

__all__ = ["LoaderConfig", "DatasetInfo", "EpochPlan", "make_loader", "MODES", "BACKENDS"]

MODES = ("train", "eval", "ten_crop")
BACKENDS = ("dali", "torch")
PAD_LABEL = -1


@dataclass(frozen=True)
class LoaderConfig:
    """Everything a loader needs; saved with training runs."""

    root: str
    split: str = "train"
    batch_size: int = 256
    mode: str = "train"  # train: random crop + flip + lighting; eval: centre crop; ten_crop: 10 views
    rank: int = 0
    world_size: int = 1
    backend: str = "dali"
    device: str = "auto"  # auto, cpu, gpu
    device_id: int | None = None  # GPU index; default: rank % number of GPUs
    workers: int = 0  # decoding threads (DALI) or DataLoader processes (torch); 0: all cores
    seed: int = 0
    crop: int = 0  # 0: size * 224 / 256 (224 for the stored 256)
    lighting_std: float = C.PCA_LIGHTING_STD  # 0 turns the PCA lighting off
    lighting_scale: str = "std"  # see augment.lighting_scales
    normalize: str = "mean_image"
    last_batch: str = "pad"  # pad or drop
    shuffle_buffer: int = 4096  # samples in the in-memory shuffle buffer (train mode)
    fixed_window: tuple[int, int] | None = None  # (top, left) instead of random: for tests
    fixed_flip: bool | None = None  # instead of a coin flip: for tests

    def validate(self) -> None:
        """Raise ImgprepError on bad settings."""
        checks = [
            (self.mode in MODES, f"mode {self.mode!r}: one of {', '.join(MODES)}"),
            (self.backend in BACKENDS, f"backend {self.backend!r}: one of {', '.join(BACKENDS)}"),
            (self.device in ("auto", "cpu", "gpu"), f"device {self.device!r}: auto, cpu or gpu"),
            (self.batch_size >= 1, f"batch size {self.batch_size}: must be at least 1"),
            (0 <= self.rank < self.world_size, f"rank {self.rank} with world size {self.world_size}"),
            (self.normalize in NORMALIZE, f"normalize {self.normalize!r}: one of {', '.join(NORMALIZE)}"),
            (self.last_batch in ("pad", "drop"), f"last_batch {self.last_batch!r}: pad or drop"),
            (self.lighting_std >= 0, f"lighting std {self.lighting_std}: must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ImgprepError(msg)


@dataclass
class DatasetInfo:
    """A prepared split: shards with their sample counts, the statistics, the classes."""

    root: str
    split: str
    size: int
    shards: list[str]  # absolute .tar paths in manifest order
    counts: list[int]
    classes: list[dict]
    stats: dict | None
    mean_image: np.ndarray | None  # float32 (size, size, 3)

    @classmethod
    def load(cls, root: str, split: str, need_stats: bool = True) -> "DatasetInfo":
        """Read the manifest (and statistics) of a prepared dataset."""
        from .verify import load_manifest, load_stats

        m = load_manifest(root)
        if split not in m["splits"]:
            raise ImgprepError(f"{root}: no {split!r} split (has {', '.join(m['splits'])}); prepare it first")
        s = m["splits"][split]
        shards = [os.path.join(root, sh["path"]) for sh in s["shards"]]
        for p in shards:
            if not os.path.exists(p) or not os.path.exists(p[:-4] + ".idx"):
                raise ImgprepError(f"{p}: missing shard or index; run `imgprep verify {root}`")
        stats = mean = None
        if need_stats:
            mean, stats = load_stats(root)
        return cls(root, split, m["config"]["size"], shards, [sh["count"] for sh in s["shards"]],
                   m["classes"], stats, mean)

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class EpochPlan:
    """Which samples one rank reads in one epoch, and how many batches it yields."""

    order: list[int]  # shard indices in reading order
    start: int  # this rank's first sample in the concatenation of `order`
    stop: int
    batches: int  # batches yielded by every rank

    @classmethod
    def make(cls, info: DatasetInfo, cfg: LoaderConfig, epoch: int) -> "EpochPlan":
        n_sh = len(info.shards)
        shuffle = cfg.mode == "train"
        order = list(np.random.default_rng([cfg.seed, epoch]).permutation(n_sh)) if shuffle else list(range(n_sh))
        n, w, b = info.total, cfg.world_size, cfg.batch_size
        start, stop = n * cfg.rank // w, n * (cfg.rank + 1) // w
        batches = math.ceil(math.ceil(n / w) / b) if cfg.last_batch == "pad" else (n // w) // b
        return cls([int(i) for i in order], start, stop, batches)

    def segments(self, counts: list[int]) -> list[tuple[int, int, int]]:
        """(shard index, first sample in shard, number of samples) covering [start, stop)."""
        out, pos = [], 0
        for s in self.order:
            a, z = max(self.start, pos), min(self.stop, pos + counts[s])
            if a < z:
                out.append((s, a - pos, z - a))
            pos += counts[s]
        return out


def resolve_device(device: str) -> str:
    """'cpu' or 'gpu' for 'auto' (a CUDA GPU that torch can use), erroring on a missing GPU."""
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if device == "gpu" and not has_gpu:
        raise ImgprepError("--device gpu: no CUDA GPU is visible; use --device cpu or auto")
    return "gpu" if has_gpu else "cpu"


def make_loader(root: str, split: str = "train", batch_size: int = 256, mode: str = "train", *,
                rank: int = 0, world_size: int = 1, backend: str = "dali", device: str = "auto", **kwargs):
    """A loader over a prepared dataset: iterate it for one epoch of `(images, labels)`.

    Args:
        root: OUT folder of `imgprep prepare`.
        split: "train" or "val".
        batch_size: samples per batch (per rank).
        mode: "train" (random 224 crop, flip, PCA lighting), "eval" (centre crop) or "ten_crop".
        rank, world_size: this process's part of the data (DDP ranks).
        backend: "dali" (default) or "torch".
        device: "auto" (GPU decode where a GPU is), "cpu" or "gpu".
        **kwargs: any other LoaderConfig field (seed, lighting_std, normalize, last_batch, ...).
    Returns:
        A loader: `iter()` gives images float32 [N, 3, 224, 224] ([N, 10, 3, 224, 224] for
        ten_crop; on the GPU when DALI decodes there) and labels int64 [N] (-1 marks padding);
        `len()` is the number of batches per epoch; `set_epoch(e)` picks the epoch's order
        (iterating advances it by one).
    """
    cfg = LoaderConfig(root=root, split=split, batch_size=batch_size, mode=mode, rank=rank,
                       world_size=world_size, backend=backend, device=device, **kwargs)
    cfg.validate()
    info = DatasetInfo.load(root, split, need_stats=cfg.normalize != "none" or (mode == "train" and cfg.lighting_std > 0))
    if cfg.crop == 0:
        cfg = replace(cfg, crop=info.size * C.CROP_SIZE // C.STORED_SIZE)
    if info.total < cfg.world_size:
        raise ImgprepError(f"{root}: the {split} split has {info.total} samples, fewer than the {cfg.world_size} ranks")
    if not 0 < cfg.crop <= info.size:
        raise ImgprepError(f"crop {cfg.crop}: must be between 1 and the stored size {info.size}")
    if cfg.backend == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise ImgprepError("backend 'dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120 "
                               "(or use backend='torch')") from None
        from .dali_loader import DaliLoader

        return DaliLoader(cfg, info)
    from .torch_loader import TorchLoader

    return TorchLoader(cfg, info)


class BaseLoader:
    """Epoch bookkeeping and padding shared by the backends."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo):
        self.cfg, self.info = cfg, info
        self.epoch = 0
        self.device = resolve_device(cfg.device)

    def set_epoch(self, epoch: int) -> None:
        """Use the sample order of `epoch` for the next iteration."""
        self.epoch = epoch

    def plan(self) -> EpochPlan:
        return EpochPlan.make(self.info, self.cfg, self.epoch)

    def __len__(self) -> int:
        return self.plan().batches

    @property
    def samples(self) -> int:
        """Real (non-padding) samples this rank yields per epoch."""
        p = self.plan()
        return min(p.stop - p.start, p.batches * self.cfg.batch_size)

    def _batches(self, plan: EpochPlan):
        """Backend hook: yield (images, labels, valid) for this rank's samples, B at a time."""
        raise NotImplementedError

    def __iter__(self):
        import torch

        plan = self.plan()
        b = self.cfg.batch_size
        made = 0
        last = None
        for images, labels, valid in self._batches(plan):
            if made == plan.batches:
                continue  # drop mode: the remainder is read (to keep readers aligned) but not yielded
            if valid < b:
                if self.cfg.last_batch == "drop":
                    continue
                labels = labels.clone()
                labels[valid:] = PAD_LABEL
            made += 1
            last = images
            yield images, labels
        while made < plan.batches:  # this rank has fewer samples than the largest one: a pad batch
            images = torch.zeros_like(last) if last is not None else self._empty_images()
            yield images, torch.full((b,), PAD_LABEL, dtype=torch.int64, device=images.device)
            made += 1
        self.epoch += 1

    def _empty_images(self):
        import torch

        c = self.cfg
        shape = (c.batch_size, 10, 3, c.crop, c.crop) if c.mode == "ten_crop" else (c.batch_size, 3, c.crop, c.crop)
        return torch.zeros(shape, device="cuda" if self.device == "gpu" else "cpu")


def measure(loader, epochs: int = 1, steps: int | None = None, warmup: int = 1) -> dict:
    """Iterate a loader and time it: images/s (real samples), batches, batch latency.

    `warmup` batches at the start (pipeline build, worker start-up) are not timed.
    """
    import time

    lat, images, batches, timed_images = [], 0, 0, 0
    t_start = None
    done = False
    for _ in range(epochs if steps is None else 10**9):
        t = time.perf_counter()
        for _x, y in loader:
            now = time.perf_counter()
            n = int((y >= 0).sum())
            batches += 1
            images += n
            if batches > warmup:
                lat.append(now - t)
                timed_images += n
            elif batches == warmup:
                t_start = now
            t = now
            if steps is not None and batches >= steps:
                done = True
                break
        if done or steps is None:
            break
    seconds = (time.perf_counter() - t_start) if t_start is not None and lat else 0.0
    return {
        "images": images,
        "batches": batches,
        "images_per_second": round(timed_images / seconds, 1) if seconds > 0 else None,
        "batch_latency_ms": {"median": round(1000 * float(np.median(lat)), 2),
                             "p90": round(1000 * float(np.percentile(lat, 90)), 2)} if lat else None,
        "backend": loader.cfg.backend,
        "device": loader.device,
        "mode": loader.cfg.mode,
        "batch_size": loader.cfg.batch_size,
    }
