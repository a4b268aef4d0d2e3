"""Loaders: prepared shards to `(images, labels)` batches with the paper's augmentation.

`make_loader(...)` is the public factory. Two backends share one epoch plan (`loader_base`);
"auto" (default) picks DALI where it is installed and the fallback elsewhere:
- "dali": one DALI pipeline, decoding on the GPU ("mixed") where there is one and on
  the CPU where there is none (`imgprep.dali_loader`).
- "torch": webdataset + `torch.utils.data.DataLoader` workers, the same semantics
  (`imgprep.torch_loader`).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from .dataset import Dataset, DatasetInfo
from .errors import ImgprepError
from .fileio import is_utf8
from .geometry import train_crop
from .loader_base import BACKENDS, MODES, PAD_LABEL, BaseLoader, EpochPlan, LoaderConfig, resolve_backend

__all__ = ["LoaderConfig", "DatasetInfo", "EpochPlan", "BaseLoader", "make_loader", "MODES", "BACKENDS", "PAD_LABEL"]


def make_loader(
    root: str | Dataset,
    split: str = "train",
    batch_size: int = 256,
    mode: str = "train",
    *,
    rank: int = 0,
    world_size: int = 1,
    backend: str = "auto",
    device: str = "auto",
    **kwargs,
):
    """A loader over a prepared dataset: iterate it for one epoch of `(images, labels)`.

    Args:
        root: OUT folder of `imgprep prepare`, or that dataset opened once (`open_dataset`), so
            that several loaders read its manifest and statistics once.
        split: "train" or "val".
        batch_size: samples per step, all ranks together; each of `world_size` ranks loads
            `batch_size // world_size` of them (`loader.cfg.rank_batch`).
        mode: "train" (random 224 crop, flip, PCA lighting), "eval" (centre crop) or "ten_crop".
        rank, world_size: this process's part of the data (DDP ranks).
        backend: "auto" (default: DALI where it imports, else torch), "dali" or "torch"; the one
            used is `loader.cfg.backend`.
        device: "auto" (GPU decode where a GPU is), "cpu" or "gpu".
        **kwargs: any other LoaderConfig field (seed, lighting_std, normalize, last_batch, ...).
    Returns:
        A loader: `iter()` gives images float32 [N, 3, 224, 224] ([N, 10, 3, 224, 224] for
        ten_crop; on the GPU when DALI decodes there) and labels int64 [N] (-1 marks padding);
        `len()` is the number of batches per epoch; `set_epoch(e)` picks the epoch's order
        (iterating advances it by one).
    """
    dataset = root if isinstance(root, Dataset) else None  # opened by the caller: not read again
    cfg = LoaderConfig(
        root=dataset.root if dataset is not None else root,
        split=split,
        batch_size=batch_size,
        mode=mode,
        rank=rank,
        world_size=world_size,
        backend=backend,
        device=device,
        **kwargs,
    )
    cfg.validate()
    requested = cfg.backend
    cfg = replace(cfg, backend=resolve_backend(cfg.backend))
    if dataset is None:
        dataset = Dataset.open(cfg.root, cfg.retry())
    info = DatasetInfo.load(
        dataset, split, need_stats=cfg.normalize != "none" or (mode == "train" and cfg.lighting_std > 0)
    )
    if cfg.backend == "dali" and not is_utf8(info.shards[0]):  # DALI takes paths as UTF-8 strings only
        if requested == "dali":
            raise ImgprepError(
                f"{os.fsencode(cfg.root)!r}: DALI cannot open paths that are not UTF-8; rename the folder "
                "or use --backend torch (or auto)"
            )
        cfg = replace(cfg, backend="torch")
    if cfg.crop == 0:
        cfg = replace(cfg, crop=train_crop(info.size))
    if info.total < cfg.world_size:
        raise ImgprepError(f"{root}: the {split} split has {info.total} samples, fewer than the {cfg.world_size} ranks")
    per_rank = math.ceil(info.total / cfg.world_size)
    if cfg.rank_batch > per_rank:  # refused before any buffer of that size is allocated
        raise ImgprepError(
            f"--batch-size {cfg.batch_size}: {cfg.rank_batch} per rank, more than the {per_rank} samples each "
            f"rank reads of the {split} split ({info.total} in all); use at most {per_rank * cfg.world_size}"
        )
    if not 0 < cfg.crop <= info.size:
        raise ImgprepError(f"crop {cfg.crop}: must be between 1 and the stored size {info.size}")
    if cfg.backend == "dali":
        from .dali_loader import DaliLoader

        return DaliLoader(cfg, info)
    from .torch_loader import TorchLoader

    return TorchLoader(cfg, info)
