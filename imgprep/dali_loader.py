"""The DALI backend: one pipeline definition for GPU ("mixed") and CPU decoding.

Graph (train and eval modes), per sample; every step a DALI operator, no Python callback:
  webdataset reader (index files, shard_id/num_shards, shuffle buffer)
    window (top, left) drawn as integers, mirror as a coin flip
    jpg -> decoders.image_crop (only the 224 window is decoded; "mixed" on a GPU, "cpu" without)
    GPU:  crop_mirror_normalize(mean = channel_mean - lighting_shift, std, mirror)      # (3, 224, 224)
          - crop_mirror_normalize(mean image; same window, same mirror, std)           # (3, 224, 224)
    CPU:  one fused operator (numba_function: compiled native code, run per sample on DALI's
          threads) computing the same in a single pass: img[h, w'] / std + offset - M[top+h, left+w'] / std
    cls -> ASCII digits parsed with arithmetic                                         # int32 label
Lighting shift = sum_i (a_i * s_i) * eigvec[i], a ~ N(0, sigma) drawn per image.

Why the CPU operator: with stock operators the per-pixel mean image needs two more float passes
over the batch (crop+mirror of the mean, then a subtraction): 27-31% more time on 2 cores, where
the fused loop costs 3-15%; and crop_mirror_normalize alone is slower than the whole fused loop.
The fused loop reads the mean image window in place (it stays in cache: one image for all
samples). Without numba the CPU runs the GPU's operator chain; tests check both against the
NumPy reference. Outputs are handed to torch without a copy (dynamic executor + DLPack).
"""

from __future__ import annotations

import math

import numpy as np

from ._mp import resolve_workers
from .augment import lighting_scales, normalization, ten_crop_offsets
from .errors import ImgprepError
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


def _fused_kernel(out, img, mean, p):
    """One augmented view in one pass (compiled by numba; DALI calls it per sample on its threads).

    out: float32 (3, c, c). img: uint8 (c, c, 3), the decoded window. mean: float32 (2, 3, S, S),
    the mean image divided by std and its mirror image, or (2, 3, 1, 1) for none.
    p: float32 (9,): top, left, mirror, 1/std (3), (lighting shift - channel mean) / std (3).
    out[ch, h, w] = img[h, w', ch] / std + offset[ch] - mean[ch, top + h, left + w'],
    w' = c - 1 - w when mirrored (read from the mirrored mean, so every loop runs forwards).
    """
    top, left, mirror = int(p[0]), int(p[1]), p[2] > 0.5
    hh, ww = img.shape[0], img.shape[1]
    i0, i1, i2, o0, o1, o2 = p[3], p[4], p[5], p[6], p[7], p[8]
    has_mean = mean.shape[3] > 1
    f = 1 if mirror else 0
    a = mean.shape[3] - left - ww if mirror else left  # the window's left edge in the (mirrored) mean
    row = np.empty((3, ww), np.uint8)  # one row, de-interleaved into channel planes (mirrored if asked)
    s0, s1, s2 = row[0], row[1], row[2]
    for h in range(hh):
        src = img[h]
        d0, d1, d2 = out[0, h], out[1, h], out[2, h]
        if mirror:  # reversed while de-interleaving: a reversed strided read in the main loop does not vectorize
            for w in range(ww):
                s0[ww - 1 - w], s1[ww - 1 - w], s2[ww - 1 - w] = src[w, 0], src[w, 1], src[w, 2]
        else:
            for w in range(ww):
                s0[w], s1[w], s2[w] = src[w, 0], src[w, 1], src[w, 2]
        if has_mean:
            m0, m1, m2 = mean[f, 0, top + h, a:a + ww], mean[f, 1, top + h, a:a + ww], mean[f, 2, top + h, a:a + ww]
            for w in range(ww):
                d0[w] = s0[w] * i0 + o0 - m0[w]
                d1[w] = s1[w] * i1 + o1 - m1[w]
                d2[w] = s2[w] * i2 + o2 - m2[w]
        else:
            for w in range(ww):
                d0[w] = s0[w] * i0 + o0
                d1[w] = s1[w] * i1 + o1
                d2[w] = s2[w] * i2 + o2


def _fused_setup(outs, ins):
    """Output shape (3, c, c) from the window's (c, c, 3)."""
    for i in range(len(outs[0])):
        outs[0][i][0] = 3
        outs[0][i][1] = ins[0][i][0]
        outs[0][i][2] = ins[0][i][1]


_FUSED: list = []  # the compiled operator, built once per process (numba compiles in ~2 s)


def fused_operator():
    """DALI's numba_function operator running `_fused_kernel`, or None without numba."""
    if not _FUSED:
        try:
            from nvidia.dali import types
            from nvidia.dali.plugin.numba.experimental import NumbaFunction
        except ImportError:
            _FUSED.append(None)
        else:
            _FUSED.append(NumbaFunction(run_fn=_fused_kernel, setup_fn=_fused_setup, out_types=[types.FLOAT],
                                        in_types=[types.UINT8, types.FLOAT, types.FLOAT], outs_ndim=[3],
                                        ins_ndim=[3, 4, 1], device="cpu"))
    return _FUSED[0]


def build_pipeline(cfg: LoaderConfig, info: DatasetInfo, paths: list[str], gpu: bool, device_id, seed: int,
                   num_threads: int, fused: bool | None = None):
    """The DALI pipeline for one epoch over `paths` (in reading order), this rank's shard.

    fused: use the one-pass CPU operator (None: on the CPU whenever numba is installed; ignored on
    the GPU, which always runs the operator chain).
    """
    from nvidia.dali import fn, pipeline_def, types

    size, crop = info.size, cfg.crop
    sub_mean, ch_mean, ch_std = normalization(cfg.normalize, info.stats)
    train = cfg.mode == "train"
    lighting = train and cfg.lighting_std > 0
    span = size - crop
    op = None if gpu or fused is False else fused_operator()
    if fused and op is None and not gpu:
        raise ImgprepError("the loader's fused CPU operator needs numba: pip install numba")

    def mean_image():  # (S, S, 3) float32, on the pipeline's device
        m = types.Constant(np.ascontiguousarray(info.mean_image, np.float32), layout="HWC")
        return m.gpu() if gpu else m

    @pipeline_def(batch_size=cfg.batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=paths, index_paths=[p[:-4] + ".idx" for p in paths], ext=["jpg", "cls"],
            missing_component_behavior="error", random_shuffle=train,
            initial_fill=max(1, min(cfg.shuffle_buffer, info.total)), shard_id=cfg.rank,
            num_shards=cfg.world_size, pad_last_batch=True, stick_to_shard=True, name="reader")
        label = _parse_label(cls)
        dec = "mixed" if gpu else "cpu"
        # nvJPEG's default chroma upsampling differs from libjpeg-turbo's by 2 levels on average (up
        # to 87 at colour edges); the "fancy" one matches it (0.015 on average, 3 at most; measured on
        # an H200 for 7% of the decoder's speed), so GPU, CPU and the torch fallback see one image
        decode_args = {"jpeg_fancy_upsampling": True} if gpu else {}
        shift = None
        if lighting:
            a = fn.random.normal(shape=[3, 1], stddev=cfg.lighting_std)  # (3, 1) per image
            basis = lighting_scales(info.stats["eigval"], cfg.lighting_scale)[:, None] * np.asarray(info.stats["eigvec"])
            shift = fn.reductions.sum(a * types.Constant(basis.astype(np.float32)), axes=0)  # sum_i a_i s_i v_i: (3,)
        std = ch_std.astype(np.float32).tolist()
        if cfg.mode == "ten_crop":
            img = fn.cast(fn.decoders.image(jpg, device=dec, output_type=types.RGB, **decode_args), dtype=types.FLOAT)
            if sub_mean:
                img = img - mean_image()
            views = []
            for mirror in (0, 1):
                for top, left in ten_crop_offsets(size, crop):
                    views.append(fn.crop_mirror_normalize(
                        img, crop=(crop, crop), crop_pos_x=left / span if span else 0.5,
                        crop_pos_y=top / span if span else 0.5, mirror=mirror, mean=ch_mean.astype(np.float32).tolist(),
                        std=std, output_layout="CHW", dtype=types.FLOAT))
            return fn.stack(*views), label
        # the window as integers (top, left): the decoder gets them as fractions of the span, which
        # it maps back exactly (anchor = round(pos * span)), and the mean image uses the same integers
        if train and cfg.fixed_window is None:
            top, left = (fn.random.uniform(values=list(range(span + 1)), dtype=types.INT32) for _ in range(2))
            pos_y, pos_x = (fn.cast(v, dtype=types.FLOAT) / float(max(span, 1)) for v in (top, left))
        else:
            top, left = cfg.fixed_window if cfg.fixed_window is not None else (span // 2, span // 2)
            pos_y, pos_x = (top / span, left / span) if span else (0.5, 0.5)
        if cfg.fixed_flip is not None:
            mirror = int(cfg.fixed_flip)
        else:
            mirror = fn.random.coin_flip(probability=0.5, dtype=types.INT32) if train else 0
        img = fn.decoders.image_crop(jpg, device=dec, output_type=types.RGB, crop=(crop, crop),
                                     crop_pos_x=pos_x, crop_pos_y=pos_y, **decode_args)
        if op is not None:
            inv = (1.0 / ch_std).astype(np.float32)
            offset = types.Constant((-ch_mean * inv).astype(np.float32))
            if shift is not None:
                offset = offset + shift * types.Constant(inv)
            def one(v):  # an int or a per-sample scalar -> float32 (1,)
                return fn.reshape(fn.cast(types.Constant(v) if isinstance(v, int) else v, dtype=types.FLOAT), shape=[1])

            params = fn.cat(one(top), one(left), one(mirror), types.Constant(inv), offset)  # (9,) per image
            plane = (info.mean_image * inv).transpose(2, 0, 1) if sub_mean else np.zeros((3, 1, 1))
            plane = np.stack([plane, plane[:, :, ::-1]])  # (2, 3, S, S): as is, mirrored
            return op(img, types.Constant(np.ascontiguousarray(plane, np.float32)), params), label
        # (x + shift - M[window]) / std = CMN(x; mean=-shift) - CMN(M; window): each term one pass
        # that also mirrors and transposes to CHW
        mean = ch_mean.astype(np.float32).tolist() if shift is None else types.Constant(ch_mean.astype(np.float32)) - shift
        out = fn.crop_mirror_normalize(img, mirror=mirror, mean=mean, std=std, output_layout="CHW",
                                       dtype=types.FLOAT)
        if sub_mean:
            out = out - fn.crop_mirror_normalize(mean_image(), crop=(crop, crop),
                                                 crop_pos_x=pos_x, crop_pos_y=pos_y, mirror=mirror,
                                                 mean=[0.0, 0.0, 0.0], std=std, output_layout="CHW",
                                                 dtype=types.FLOAT)
        return out, label

    p = pipe()
    p.build()
    return p


def _to_torch(tl, gpu: bool, device_id: int | None = None):
    """A dense DALI TensorList as a torch tensor on its device, without a copy: the dynamic
    executor leaves the buffer to the tensor for as long as the tensor lives."""
    import torch

    t = tl.as_tensor()
    if not gpu:
        return torch.from_dlpack(t)
    with torch.cuda.device(device_id if device_id is not None else torch.cuda.current_device()):
        return torch.from_dlpack(t)


class DaliLoader(BaseLoader):
    """`make_loader(backend="dali")`. Set `fused = False` to run the GPU's operator chain on the
    CPU too (for comparison; slower)."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo):
        super().__init__(cfg, info)
        self.gpu = self.device == "gpu"
        if self.gpu:
            import torch

            self.device_id = cfg.device_id if cfg.device_id is not None else cfg.rank % torch.cuda.device_count()
        else:
            self.device_id = None
        self.threads = resolve_workers(cfg.workers)
        self.fused: bool | None = None  # the one-pass CPU operator: None = whenever numba is installed

    def _batches(self, plan: EpochPlan):
        import torch

        left = plan.stop - plan.start
        paths = [self.info.shards[i] for i in plan.order]
        seed = int(np.random.default_rng([self.cfg.seed, self.epoch, self.cfg.rank]).integers(0, 2**31 - 1))
        pipe = build_pipeline(self.cfg, self.info, paths, self.gpu, self.device_id, seed, self.threads, self.fused)
        try:
            for _ in range(math.ceil(left / self.cfg.batch_size)):
                images, labels = pipe.run()
                images = _to_torch(images, self.gpu, self.device_id)
                labels = _to_torch(labels, False).to(torch.int64)
                if self.gpu:
                    labels = labels.to(images.device, non_blocking=True)
                valid = min(self.cfg.batch_size, left)
                left -= valid
                yield images, labels, valid
        finally:
            del pipe
