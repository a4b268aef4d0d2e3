"""What both loader backends share: the configuration, the epoch plan and the base class.

Epoch plan, identical for both backends and all ranks:
- the shard order is permuted with (seed, epoch); the samples of the concatenated shards are
  split into `world_size` contiguous ranges, rank r taking [r*N//W, (r+1)*N//W) (DALI's rule);
- within its range a rank shuffles in a buffer (train mode);
- every rank yields the same number of batches: `last_batch="pad"` (default) yields
  ceil(ceil(N/W)/B) batches, padding with label PAD_LABEL (-1, ignored by the trainer's loss and
  metrics), so that together the ranks cover every sample exactly once; `last_batch="drop"`
  yields floor(floor(N/W)/B) full batches and leaves the rest out.

The backends (`dali_loader`, `torch_loader`) import this module; the factory (`loaders`) imports
the backends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import numpy as np

from .augment import LIGHTING_SCALES, NORMALIZE
from .config import SEED_MIN, Settings, check_settings, setting
from .constants import PAD_LABEL, PCA_LIGHTING_STD, SPLITS
from .dataset import DatasetInfo
from .errors import ImgprepError
from .integrity import ON_CORRUPT, ShardChecker, left_out

__all__ = [
    "LoaderSettings",
    "LoaderConfig",
    "EpochPlan",
    "BaseLoader",
    "MODES",
    "BACKENDS",
    "DEVICES",
    "LAST_BATCH",
    "DTYPES",
    "PAD_LABEL",
    "resolve_device",
    "resolve_backend",
]

MODES = ("train", "eval", "ten_crop")
BACKENDS = ("auto", "dali", "torch")  # auto: DALI where it imports (Linux), else the torch fallback
DEVICES = ("auto", "cpu", "gpu")
LAST_BATCH = ("pad", "drop")
DTYPES = ("float32", "bfloat16", "float16")  # of the images a loader yields
CPU_OPERATORS = ("auto", "fused", "chain")
HANDOVERS = ("auto", "on", "off")


@dataclass(frozen=True, kw_only=True)
class RemoteSettings(Settings):
    """How requests to a URL are made, declared once (the loaders' and `upload`'s)."""

    remote_timeout: float = setting(
        30.0, "Dataset at a URL: seconds without a byte before a request is tried again.", min=0.05
    )
    remote_attempts: int = setting(6, "Dataset at a URL: tries of each request before it fails.", min=1)

    def retry(self):
        """The `remote.Retry` of these settings."""
        from .remote import Retry

        return Retry(attempts=self.remote_attempts, timeout=self.remote_timeout)


@dataclass(frozen=True, kw_only=True)
class CacheSettings(RemoteSettings):
    """The local shard cache of a dataset at a URL, declared once (every loading command's, `bench
    load`'s too)."""

    cache_dir: str = setting(
        "",
        "Dataset at a URL: the local shard cache (default: ~/.cache/imgprep/shards, or "
        "$TMPDIR/imgprep-UID/shards without a writable home).",
        path=True,
    )
    cache_limit: float = setting(
        0.0,
        "Dataset at a URL: GB the shard cache may hold (0: the split's size, at most 90% of the "
        "free disk). Shards beyond it are fetched again each epoch.",
        min=0,
    )
    cache_ahead: int = setting(2, "Dataset at a URL: shards fetched ahead of the one being read.", min=0)

    def cache_settings(self) -> dict:
        """These settings as keyword arguments of `make_loader`."""
        return {f.name: getattr(self, f.name) for f in fields(CacheSettings)}


@dataclass(frozen=True, kw_only=True)
class LoaderSettings(CacheSettings):
    """The loader settings a user chooses, declared once here: every command that loads data (`load`,
    `train`, `eval`, `experiment`, `bench train`) has them as options, by inheriting them, and hands
    them to `make_loader` whole (`loader_settings()`); none is copied by hand."""

    backend: str = setting(
        "auto", "Loader: auto (DALI where it is installed, else the PyTorch fallback), dali or torch.", choices=BACKENDS
    )
    workers: int = setting(0, "Loader: decoding threads (DALI) or DataLoader processes (torch); 0: all cores.", min=0)
    on_corrupt: str = setting(
        "error",
        "Loader: a sample whose bytes changed since prepare: stop with an error naming it, or skip it (counted).",
        choices=ON_CORRUPT,
    )
    prefetch: int = setting(2, "Loader: batches DALI prepares ahead of the one being used.", min=1)
    hw_decoder_load: float = setting(
        0.65,
        "Loader: share of the JPEGs given to the GPU's hardware JPEG decoder where it has one (A100, H100, "
        "H200); nvJPEG's CUDA decoder takes the rest.",
        min=0,
        max=1,
    )

    def loader_settings(self) -> dict:
        """These settings as keyword arguments of `make_loader`."""
        return {f.name: getattr(self, f.name) for f in fields(LoaderSettings)}


@dataclass(frozen=True)
class LoaderConfig(LoaderSettings):
    """Everything a loader needs; saved with training runs."""

    root: str
    split: str = setting("train", "Split to read.", choices=SPLITS)
    batch_size: int = setting(
        256, "Samples per step, all processes together (each of world_size loads batch_size / world_size).", min=1
    )
    mode: str = setting(
        "train",
        "train: random crop, flip, PCA lighting; eval: centre crop; ten_crop: the paper's ten views.",
        choices=MODES,
    )
    rank: int = setting(0, cli=False, min=0)
    world_size: int = setting(1, cli=False, min=1)
    device: str = setting("auto", "Where DALI decodes: auto (the GPU where there is one), cpu or gpu.", choices=DEVICES)
    device_id: int | None = setting(None, cli=False)  # GPU index; default: rank % number of GPUs
    seed: int = setting(0, "Seed of the epoch order and the augmentation.", min=SEED_MIN)
    crop: int = setting(0, cli=False)  # 0: size * 224 / 256 (224 for the stored 256)
    lighting_std: float = setting(PCA_LIGHTING_STD, "Std of the PCA lighting coefficients (0: off).", min=0)
    lighting_scale: str = setting("std", cli=False, choices=LIGHTING_SCALES)  # see augment.lighting_scales
    normalize: str = setting("mean_image", "Pixel normalization after the lighting noise.", choices=NORMALIZE)
    last_batch: str = setting("pad", cli=False, choices=LAST_BATCH)
    # How DALI finishes a view (not options: the defaults are the fast paths; benchmarks compare the others).
    # cpu_operator: on the CPU, the one-pass numba operator (fused; auto: wherever numba is installed) or
    # DALI's operator chain. handover: uint8 windows finished by `finish.WindowFinisher` in the consumer
    # (auto: on the GPU) or the whole view made in DALI.
    cpu_operator: str = setting("auto", cli=False, choices=CPU_OPERATORS)
    handover: str = setting("auto", cli=False, choices=HANDOVERS)
    dtype: str = setting("float32", cli=False, choices=DTYPES)  # of the images yielded (the trainer: bfloat16)
    channels_last: bool = setting(False, cli=False)  # yield images in channels_last memory format
    shuffle_buffer: int = setting(4096, cli=False, min=1)  # samples in the in-memory shuffle buffer (train mode)

    def validate(self) -> None:
        """Raise ImgprepError on bad settings: each against its declaration, then the cross-field rules."""
        check_settings(self)
        if not 0 <= self.rank < self.world_size:
            raise ImgprepError(f"rank {self.rank} with world size {self.world_size}")
        if self.batch_size % self.world_size:
            raise ImgprepError(
                f"--batch-size {self.batch_size} is not divisible by the {self.world_size} processes; "
                "it is the global batch, split evenly over them"
            )

    @property
    def rank_batch(self) -> int:
        """Samples per batch this process loads: its share of the global `batch_size`."""
        return self.batch_size // self.world_size


@dataclass
class EpochPlan:
    """Which samples one rank reads in one epoch, and how many batches it yields."""

    order: list[int]  # shard indices in reading order
    start: int  # this rank's first sample in the concatenation of `order`
    stop: int
    batches: int  # batches yielded by every rank

    @classmethod
    def make(cls, info: DatasetInfo, cfg: LoaderConfig, epoch: int) -> EpochPlan:
        n_sh = len(info.shards)
        shuffle = cfg.mode == "train"
        order = list(np.random.default_rng([cfg.seed, epoch]).permutation(n_sh)) if shuffle else list(range(n_sh))
        n, w, b = info.total, cfg.world_size, cfg.rank_batch
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


def resolve_backend(backend: str) -> str:
    """'dali' or 'torch' for 'auto' (DALI where it imports: its wheels are Linux-only), erroring
    on an explicit 'dali' without it."""
    if backend == "torch":
        return "torch"
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        if backend == "dali":
            raise ImgprepError(
                "backend 'dali' needs NVIDIA DALI (Linux only): pip install nvidia-dali-cuda120, "
                "or use --backend torch (or auto)"
            ) from None
        return "torch"
    return "dali"


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


class BaseLoader:
    """Epoch bookkeeping and padding shared by the backends."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo):
        self.cfg, self.info = cfg, info
        self.epoch = 0
        self.device = resolve_device(cfg.device)
        self.checker = ShardChecker(info.shards, info.records, info.size)
        self.corrupt_skipped = 0  # samples left out because their bytes changed (on_corrupt="skip")
        self.cache = None  # at a URL: the shard cache (each shard checked as it arrives)
        from .reader import IndexCache

        self.indexes = IndexCache()  # the shards' parsed DALI indexes, for all the epochs
        if info.dataset is not None and info.dataset.is_remote:
            self.cache = info.dataset.shard_cache(info.split, cfg.cache_dir, cfg.cache_limit, cfg.retry())

    def shard_source(self, plan: EpochPlan):
        """Where this epoch's readers get the shards: a local dataset's, checked now against the
        manifest (`check_shards`), or the cache of a dataset at a URL, which checks each shard on
        arrival and fetches `cache_ahead` shards ahead of the reader."""
        from .reader import CachedShards, LocalShards

        if self.cache is None:
            return LocalShards(self.info.shards, self.check_shards(plan), self.indexes)
        self.cache.new_epoch()
        return CachedShards(self.cache, self.cfg.on_corrupt, self.cache_ahead(), self.indexes)

    def cache_ahead(self) -> int:
        """`cache_ahead`, fewer where the cache limit could not hold them with the shard being read."""
        biggest = max(r["bytes"] for r in self.info.records)
        return max(0, min(self.cfg.cache_ahead, self.cache.limit // max(1, biggest) - 1))

    def check_shards(self, plan: EpochPlan) -> dict[int, set[str]]:
        """Check this rank's shards of the epoch against the manifest (`integrity`): raise on a
        corrupt sample, or (skip) return {shard index: keys to leave out} and count them."""
        skip = {}
        for s, first, count in plan.segments(self.info.counts):
            path = self.info.shards[s]
            mine = left_out(self.checker.bad_samples(path), first, count, path, self.cfg.on_corrupt)
            if mine:
                skip[s] = mine
                self.corrupt_skipped += len(mine)
        return skip

    @property
    def dtype(self):
        """The torch dtype of the images yielded."""
        import torch

        return getattr(torch, self.cfg.dtype)

    def _as_requested(self, images):
        """Images in the configured dtype and memory format (a no-op where the backend made them so)."""
        import torch

        if images.dtype != self.dtype:
            images = images.to(self.dtype)
        if self.cfg.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def warm_up(self) -> float:
        """Do the one-time work of the first epoch now: here, check the next epoch's shards of a
        local dataset (`integrity`: kept per shard; samples left out are counted when read), and
        in the DALI backend also build and run its pipeline once. The batches do not change.
        Returns the seconds it took."""
        t = time.perf_counter()
        if self.cache is None:
            for s, _, _ in self.plan().segments(self.info.counts):
                self.checker.bad_samples(self.info.shards[s])
        return time.perf_counter() - t

    def set_epoch(self, epoch: int) -> None:
        """Use the sample order of `epoch` for the next iteration."""
        self.epoch = epoch

    def plan(self) -> EpochPlan:
        return EpochPlan.make(self.info, self.cfg, self.epoch)

    def __len__(self) -> int:
        return self.plan().batches

    def _batches(self, plan: EpochPlan):
        """Backend hook: yield (images, labels, valid) for this rank's samples, B at a time."""
        raise NotImplementedError

    def __iter__(self):
        import torch

        plan = self.plan()
        b = self.cfg.rank_batch
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
            last = images = self._as_requested(images)
            yield images, labels
        while made < plan.batches:  # this rank has fewer samples than the largest one: a pad batch
            images = torch.zeros_like(last) if last is not None else self._empty_images()
            yield images, torch.full((b,), PAD_LABEL, dtype=torch.int64, device=images.device)
            made += 1
        self.epoch += 1

    def _empty_images(self):
        import torch

        c = self.cfg
        b = c.rank_batch
        shape = (b, 10, 3, c.crop, c.crop) if c.mode == "ten_crop" else (b, 3, c.crop, c.crop)
        return torch.zeros(shape, dtype=self.dtype, device="cuda" if self.device == "gpu" else "cpu")
