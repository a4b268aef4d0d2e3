"""The PyTorch fallback: webdataset reading, DataLoader worker processes, NumPy augmentation
(`augment.reference_view`), the same epoch plan and semantics as the DALI backend."""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import torch

from ._mp import exit_with, pool_context, resolve_workers
from .augment import lighting_shift, normalization, reference_view, ten_crop_offsets
from .dataset import DatasetInfo
from .errors import ImgprepError
from .geometry import center_crop_offset
from .loader_base import PAD_LABEL, BaseLoader, EpochPlan, LoaderConfig
from .reader import LocalShards, buffer_shuffle, epoch_samples

__all__ = ["TorchLoader", "SampleStream"]


def _split(segments: list[tuple[int, int, int]], parts: int, part: int) -> list[tuple[int, int, int]]:
    """The part-th of `parts` contiguous pieces of a list of (shard, first, count) segments."""
    total = sum(c for _, _, c in segments)
    a, z = total * part // parts, total * (part + 1) // parts
    out, pos = [], 0
    for s, first, count in segments:
        lo, hi = max(a, pos), min(z, pos + count)
        if lo < hi:
            out.append((s, first + lo - pos, hi - lo))
        pos += count
    return out


class SampleStream(torch.utils.data.IterableDataset):
    """Iterable of (views, labels, worker id, samples it left out so far) batches of up to batch_size for one
    rank and epoch, split over DataLoader workers; each worker stacks its own batches (one
    shared-memory tensor per batch instead of one per sample), the last one of each worker possibly
    partial. An ImgprepError in a worker comes back as ("error", its message): one line in the
    training process, not a worker traceback."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo, plan: EpochPlan, epoch: int, source: LocalShards):
        super().__init__()
        self.cfg, self.plan, self.epoch = cfg, plan, epoch
        self.info = dataclasses.replace(info, dataset=None)  # what workers need, without the manifest
        self.segments = plan.segments(info.counts)
        self.source = source

    def __iter__(self):
        wi = torch.utils.data.get_worker_info()
        n_workers, worker = (wi.num_workers, wi.id) if wi else (1, 0)

        def batch():
            x, y = torch.from_numpy(np.stack(views)), torch.tensor(labels, dtype=torch.int64)
            return x, y, worker, self.source.skipped

        views, labels = [], []
        try:
            for v, y in self._samples(n_workers, worker):
                views.append(v)
                labels.append(y)
                if len(views) == self.cfg.rank_batch:
                    yield batch()
                    views, labels = [], []
        except ImgprepError as exc:
            yield "error", str(exc), worker, 0
            return
        if views:
            yield batch()

    def _samples(self, n_workers: int, worker: int):
        import simplejpeg

        cfg, info = self.cfg, self.info
        rng = np.random.default_rng([cfg.seed, self.epoch, cfg.rank, worker])
        sub_mean, ch_mean, ch_std = normalization(cfg.normalize, info.stats)
        mean_img = info.mean_image if sub_mean else None
        train = cfg.mode == "train"

        def samples():
            # the split over ranks and workers is ours (sample ranges); left-out samples changed since
            # prepare (on_corrupt="skip")
            part = _split(self.segments, n_workers, worker)
            for _, jpg, label, left_out in epoch_samples(part, self.source):
                if not left_out:
                    yield jpg, label

        stream = samples()
        if train:
            stream = buffer_shuffle(stream, max(1, cfg.shuffle_buffer // n_workers), rng, initial=2 * cfg.rank_batch)
        size, crop = info.size, cfg.crop
        zero = np.zeros(3)
        for jpg, label in stream:
            img = simplejpeg.decode_jpeg(jpg, "RGB")
            if cfg.mode == "ten_crop":
                views = [
                    reference_view(img, mean_img, top, left, crop, flip, zero, ch_mean, ch_std)
                    for flip in (False, True)
                    for top, left in ten_crop_offsets(size, crop)
                ]
                yield np.stack(views), label
                continue
            if train:
                top, left = int(rng.integers(0, size - crop + 1)), int(rng.integers(0, size - crop + 1))
            else:
                top, left = center_crop_offset(size, size, crop)
            flip = train and bool(rng.random() < 0.5)
            shift = zero
            if train and cfg.lighting_std > 0:
                shift = lighting_shift(
                    rng.normal(0, cfg.lighting_std, 3), info.stats["eigval"], info.stats["eigvec"], cfg.lighting_scale
                )
            yield reference_view(img, mean_img, top, left, crop, flip, shift, ch_mean, ch_std), label


def _exit_with(parent: int, worker_id: int) -> None:
    exit_with(parent)


class TorchLoader(BaseLoader):
    """`make_loader(backend="torch")`."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo):
        super().__init__(cfg, info)
        self.workers = resolve_workers(cfg.workers)

    def _batches(self, plan: EpochPlan):
        source = self.shard_source(plan)  # local shards: checked here, before any worker starts
        stream = SampleStream(self.cfg, self.info, plan, self.epoch, source)
        n_workers = min(self.workers, max(1, plan.stop - plan.start))
        dl = torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=n_workers,
            prefetch_factor=4 if n_workers else None,
            pin_memory=self.device == "gpu",
            persistent_workers=False,
            multiprocessing_context=pool_context() if n_workers else None,
            worker_init_fn=functools.partial(_exit_with, os.getpid()),
        )
        b = self.cfg.rank_batch
        dev = torch.device("cuda" if self.device == "gpu" else "cpu")
        rest_x, rest_y = [], []  # partial batches (one per worker at most), merged at the end
        skipped = {}  # per worker: samples it left out so far (a dataset at a URL: checked in the workers)
        for x, y, worker, n in dl:
            if isinstance(x, str):
                raise ImgprepError(y)
            skipped[worker] = n
            if len(y) == b:
                yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), b
                continue
            rest_x.append(x)
            rest_y.append(y)
        if rest_x:
            x, y = torch.cat(rest_x), torch.cat(rest_y)
            for i in range(0, len(y), b):
                xi, yi = x[i : i + b], y[i : i + b]
                valid = len(yi)
                if valid < b:
                    xi = torch.cat([xi, xi.new_zeros((b - valid,) + tuple(xi.shape[1:]))])
                    yi = torch.cat([yi, yi.new_full((b - valid,), PAD_LABEL)])
                yield xi.to(dev, non_blocking=True), yi.to(dev, non_blocking=True), valid
        self.corrupt_skipped += sum(skipped.values())
