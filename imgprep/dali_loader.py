"""The DALI backend: one pipeline definition for GPU ("mixed") and CPU decoding.

Graph (train mode), per sample; every step a DALI operator, no Python callback:
  webdataset reader (index files, shard_id/num_shards, shuffle buffer)
    jpg -> decoders.image_crop (only the 224 window is decoded; "mixed" on a GPU, "cpu" without)
        -> crop_mirror_normalize(mean = channel_mean - lighting_shift, std, mirror)  # (3, 224, 224)
        -  crop_mirror_normalize(mean image; same window, same mirror, std)          # (3, 224, 224)
    cls -> ASCII digits parsed with arithmetic                                       # int32 label
Lighting shift = sum_i (a_i * s_i) * eigvec[i], a ~ N(0, sigma) drawn per image.
"""

from __future__ import annotations

import math

import numpy as np

from ._mp import resolve_workers
from .augment import lighting_scales, normalization, ten_crop_offsets
from .loaders import BaseLoader, DatasetInfo, EpochPlan, LoaderConfig

__all__ = ["DaliLoader", "build_pipeline"]

_LABEL_DIGITS = 7  # class indices up to 9,999,999 (ImageNet-21k has 21,841)


def _parse_label(cls):
    """ASCII decimal bytes (uint8 [L]) -> int32 scalar, with DALI arithmetic.

    Right-padding the digits with zeros to a fixed width multiplies the number by 10^(width-L):
    the weighted digit sum divided by that power is the label.
    """
    from nvidia.dali import fn, types
    import nvidia.dali.math as dmath

    d = fn.pad(fn.cast(cls, dtype=types.INT32) - 48, axes=[0], shape=[_LABEL_DIGITS], fill_value=0)
    w = types.Constant(np.array([10 ** (_LABEL_DIGITS - 1 - i) for i in range(_LABEL_DIGITS)], np.int32))
    num = fn.reductions.sum(d * w)
    length = fn.cast(cls.shape(), dtype=types.FLOAT)
    div = fn.cast(dmath.pow(10.0, float(_LABEL_DIGITS) - length), dtype=types.INT32)
    return fn.reshape(num // div, shape=[])


def build_pipeline(cfg: LoaderConfig, info: DatasetInfo, paths: list[str], gpu: bool, device_id, seed: int,
                   num_threads: int):
    """The DALI pipeline for one epoch over `paths` (in reading order), this rank's shard."""
    from nvidia.dali import fn, pipeline_def, types

    size, crop = info.size, cfg.crop
    sub_mean, ch_mean, ch_std = normalization(cfg.normalize, info.stats)
    train = cfg.mode == "train"
    lighting = train and cfg.lighting_std > 0
    span = size - crop

    @pipeline_def(batch_size=cfg.batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=paths, index_paths=[p[:-4] + ".idx" for p in paths], ext=["jpg", "cls"],
            missing_component_behavior="error", random_shuffle=train,
            initial_fill=max(1, min(cfg.shuffle_buffer, info.total)), shard_id=cfg.rank,
            num_shards=cfg.world_size, pad_last_batch=True, stick_to_shard=True, name="reader")
        label = _parse_label(cls)
        dec = "mixed" if gpu else "cpu"
        mean_img = None
        if sub_mean:
            # (measured: as fast as feeding it through external_source without copies, and simpler)
            mean_img = types.Constant(np.ascontiguousarray(info.mean_image, np.float32), layout="HWC")
            mean_img = mean_img.gpu() if gpu else mean_img
        shift_mean = ch_mean.astype(np.float32).tolist()
        if lighting:
            a = fn.random.normal(shape=[3], stddev=cfg.lighting_std) * types.Constant(
                lighting_scales(info.stats["eigval"], cfg.lighting_scale).astype(np.float32))
            vec = np.asarray(info.stats["eigvec"], np.float32)
            shift = a[0] * types.Constant(vec[0]) + a[1] * types.Constant(vec[1]) + a[2] * types.Constant(vec[2])
            shift_mean = types.Constant(ch_mean.astype(np.float32)) - shift  # CMN subtracts: adds the shift
        std = ch_std.astype(np.float32).tolist()
        if cfg.mode == "ten_crop":
            img = fn.cast(fn.decoders.image(jpg, device=dec, output_type=types.RGB), dtype=types.FLOAT)
            if mean_img is not None:
                img = img - mean_img
            views = []
            for mirror in (0, 1):
                for top, left in ten_crop_offsets(size, crop):
                    views.append(fn.crop_mirror_normalize(
                        img, crop=(crop, crop), crop_pos_x=left / span if span else 0.5,
                        crop_pos_y=top / span if span else 0.5, mirror=mirror, mean=shift_mean, std=std,
                        output_layout="CHW", dtype=types.FLOAT))
            return fn.stack(*views), label
        if train and cfg.fixed_window is None:
            px, py = fn.random.uniform(range=[0.0, 1.0]), fn.random.uniform(range=[0.0, 1.0])
        else:
            top, left = cfg.fixed_window if cfg.fixed_window is not None else (span // 2, span // 2)
            px, py = (left / span, top / span) if span else (0.5, 0.5)
        img = fn.decoders.image_crop(jpg, device=dec, output_type=types.RGB, crop=(crop, crop),
                                     crop_pos_x=px, crop_pos_y=py)
        if cfg.fixed_flip is not None:
            mirror = int(cfg.fixed_flip)
        else:
            mirror = fn.random.coin_flip(probability=0.5) if train else 0
        # (x + shift - M[window]) / std = CMN(x; mean=-shift) - CMN(M; window): each term one pass
        # that also mirrors and transposes to CHW; no separate cast or crop of the mean image.
        out = fn.crop_mirror_normalize(img, mirror=mirror, mean=shift_mean, std=std, output_layout="CHW",
                                       dtype=types.FLOAT)
        if mean_img is not None:
            out = out - fn.crop_mirror_normalize(mean_img, crop=(crop, crop), crop_pos_x=px, crop_pos_y=py,
                                                 mirror=mirror, mean=[0.0, 0.0, 0.0], std=std,
                                                 output_layout="CHW", dtype=types.FLOAT)
        return out, label

    p = pipe()
    p.build()
    return p


def _to_torch(tl, gpu: bool, device_id: int | None = None):
    """A dense float32 DALI TensorList as a torch tensor on its device (one copy)."""
    import torch

    t = tl.as_tensor()
    if not gpu:
        return torch.from_numpy(np.array(t))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dev = torch.device("cuda", device_id if device_id is not None else torch.cuda.current_device())
    out = torch.empty(t.shape(), dtype=torch.float32, device=dev)
    feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(dev))
    return out


class DaliLoader(BaseLoader):
    """`make_loader(backend="dali")`."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo):
        super().__init__(cfg, info)
        self.gpu = self.device == "gpu"
        if self.gpu:
            import torch

            self.device_id = cfg.device_id if cfg.device_id is not None else cfg.rank % torch.cuda.device_count()
        else:
            self.device_id = None
        self.threads = resolve_workers(cfg.workers)

    def _batches(self, plan: EpochPlan):
        import torch

        left = plan.stop - plan.start
        paths = [self.info.shards[i] for i in plan.order]
        seed = int(np.random.default_rng([self.cfg.seed, self.epoch, self.cfg.rank]).integers(0, 2**31 - 1))
        pipe = build_pipeline(self.cfg, self.info, paths, self.gpu, self.device_id, seed, self.threads)
        try:
            for _ in range(math.ceil(left / self.cfg.batch_size)):
                images, labels = pipe.run()
                images = _to_torch(images, self.gpu, self.device_id)
                labels = torch.from_numpy(np.array(labels.as_tensor())).to(torch.int64)
                if self.gpu:
                    labels = labels.to(images.device, non_blocking=True)
                valid = min(self.cfg.batch_size, left)
                left -= valid
                yield images, labels, valid
        finally:
            del pipe
