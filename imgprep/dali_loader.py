"""The DALI backend: one pipeline definition for GPU ("mixed") and CPU decoding.

Graph (train and eval modes), per sample; every step a DALI operator, no Python callback:
  webdataset reader (index files, shard_id/num_shards, shuffle buffer)
    window (top, left) drawn as integers, mirror as a coin flip
    jpg -> decoders.image_crop (only the 224 window is decoded; "mixed" on a GPU, with the
           hardware JPEG decoder where there is one, "cpu" without)
    GPU:  flip -> uint8 window (224, 224, 3) + parameters (6,): top, left, mirror, lighting shift;
          the loader finishes the batch in the training process with one fused op
          (`finish.WindowFinisher`: float, lighting, mean-image window, std, dtype, layout)
    CPU:  one fused operator (numba_function: compiled native code, run per sample on DALI's
          threads) computing the same in a single pass: img[h, w'] / std + offset - M[top+h, left+w'] / std
    cls -> ASCII digits parsed with arithmetic                                         # int32 label
Lighting shift = sum_i (a_i * s_i) * eigvec[i], a ~ N(0, sigma) drawn per image.

Why the GPU hand-over: DALI's stock operators need two crop_mirror_normalize passes and a
subtraction for the per-pixel mean image (42% of the GPU loader's time, measured); one fused
kernel reading uint8 does it in one pass, in the trainer's dtype and layout.
Why the CPU operator: the same three float passes, done in one loop per sample that reads the mean
image window in place (it stays in cache: one image for all samples). Without numba the CPU runs
the operator chain (`_normalize_chain`, the GPU's former path); tests check every path against the
NumPy reference. Outputs are handed to torch without a copy (dynamic executor + DLPack).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile

import numpy as np

from ._mp import resolve_workers
from .augment import lighting_scales, normalization, ten_crop_offsets
from .dataset import DatasetInfo
from .errors import ImgprepError
from .fileio import write_atomic
from .geometry import center_crop_offset
from .loader_base import PAD_LABEL, BaseLoader, EpochPlan, LoaderConfig
from .shards import dali_index_text, index_path, read_dali_index, split_key

__all__ = ["DaliLoader", "build_pipeline"]

_LABEL_DIGITS = 7  # class indices up to 9,999,999 (ImageNet-21k has 21,841)


def _parse_label(cls):
    """ASCII decimal bytes (uint8 [L]) -> int32 scalar, with DALI arithmetic.

    Right-padding the digits with zeros to a fixed width multiplies the number by 10^(width-L):
    the weighted digit sum divided by that power is the label.
    """
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    d = fn.pad(fn.cast(cls, dtype=types.INT32) - 48, axes=[0], shape=[_LABEL_DIGITS], fill_value=0)
    w = types.Constant(np.array([10 ** (_LABEL_DIGITS - 1 - i) for i in range(_LABEL_DIGITS)], np.int32))
    num = fn.reductions.sum(d * w)
    length = fn.cast(cls.shape(), dtype=types.FLOAT)
    div = fn.cast(dmath.pow(10.0, float(_LABEL_DIGITS) - length), dtype=types.INT32)
    return fn.reshape(num // div, shape=[])


@functools.cache
def fused_operator():
    """DALI's numba_function operator running `fused_cpu.fused_kernel`, or None without numba.
    Its C-callable wrappers come from numba's on-disk cache (`fused_cpu`), so only a machine's
    first process compiles them."""
    try:
        from nvidia.dali import types
        from nvidia.dali.plugin.numba.experimental import NumbaFunction

        from . import fused_cpu
    except ImportError:
        return None

    class CachedNumbaFunction(NumbaFunction):
        def _get_run_fn_cpu(self, *args, **kwargs):
            return fused_cpu.run_cfunc.address

        def _get_setup_fn_cpu(self, setup_fn):
            return fused_cpu.setup_cfunc.address

    return CachedNumbaFunction(
        run_fn=fused_cpu.fused_kernel,
        setup_fn=None,
        out_types=[types.FLOAT],
        in_types=[types.UINT8, types.FLOAT, types.FLOAT],
        outs_ndim=[3],
        ins_ndim=[3, 4, 1],
        device="cpu",
    )


def _read(cfg: LoaderConfig, info: DatasetInfo, paths: list[str], index_paths: list[str] | None):
    """The webdataset reader over this epoch's shards: (jpg bytes, label int32) per sample."""
    from nvidia.dali import fn

    jpg, cls = fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths or [index_path(p) for p in paths],
        ext=["jpg", "cls"],
        missing_component_behavior="error",
        random_shuffle=cfg.mode == "train",
        initial_fill=max(1, min(cfg.shuffle_buffer, info.total)),
        shard_id=cfg.rank,
        num_shards=cfg.world_size,
        pad_last_batch=True,
        stick_to_shard=True,
        name="reader",
    )
    return jpg, _parse_label(cls)


def _window(cfg: LoaderConfig, span: int):
    """(top, left) of the window, as integers (per-sample DALI nodes in train mode, else ints), and
    the mirror flag. The decoder gets the window as fractions of the span, which it maps back
    exactly (anchor = round(pos * span)); the mean image uses the same integers."""
    from nvidia.dali import fn, types

    train = cfg.mode == "train"
    if not train:
        return *center_crop_offset(span, span, 0), 0
    top, left = (fn.random.uniform(values=list(range(span + 1)), dtype=types.INT32) for _ in range(2))
    return top, left, fn.random.coin_flip(probability=0.5, dtype=types.INT32)


def _fraction(v, span: int):
    """A window offset (int or DALI node) as the decoder's crop position in [0, 1]."""
    from nvidia.dali import fn, types

    if not span:
        return 0.5
    return v / span if isinstance(v, int) else fn.cast(v, dtype=types.FLOAT) / float(span)


def _decode_args(gpu: bool, cfg: LoaderConfig, size: int) -> dict:
    """The decoder's settings. On the GPU: nvJPEG's default chroma upsampling differs from
    libjpeg-turbo's at colour edges, and the "fancy" one matches it, so GPU, CPU and the torch
    fallback see one image (figures in the README); `hw_decoder_load` of the JPEGs go to the
    hardware decoder where the GPU has one; its buffers are preallocated for the stored size."""
    if not gpu:
        return {"device": "cpu"}
    return {
        "device": "mixed",
        "jpeg_fancy_upsampling": True,
        "hw_decoder_load": cfg.hw_decoder_load,
        "preallocate_width_hint": size,
        "preallocate_height_hint": size,
    }


def _lighting_shift(cfg: LoaderConfig, info: DatasetInfo):
    """Per-sample RGB shift sum_i a_i s_i v_i with a ~ N(0, sigma): a DALI node (3,), or None."""
    from nvidia.dali import fn, types

    if cfg.mode != "train" or cfg.lighting_std <= 0:
        return None
    a = fn.random.normal(shape=[3, 1], stddev=cfg.lighting_std)  # (3, 1) per image
    basis = lighting_scales(info.stats["eigval"], cfg.lighting_scale)[:, None] * np.asarray(info.stats["eigvec"])
    return fn.reductions.sum(a * types.Constant(basis.astype(np.float32)), axes=0)  # (3,)


def _mean_image(info: DatasetInfo, gpu: bool):
    """The mean image, (S, S, 3) float32, as a constant on the pipeline's device."""
    from nvidia.dali import types

    m = types.Constant(np.ascontiguousarray(info.mean_image, np.float32), layout="HWC")
    return m.gpu() if gpu else m


def _as_param(v):
    """An int or a per-sample scalar node -> a float32 (1,) node, for the fused operator's parameters."""
    from nvidia.dali import fn, types

    return fn.reshape(fn.cast(types.Constant(v) if isinstance(v, int) else v, dtype=types.FLOAT), shape=[1])


def _normalize_fused(op, img, info: DatasetInfo, window, shift, norm):
    """CPU: the one-pass operator: (3, c, c) float32 of the decoded window (c, c, 3) uint8."""
    from nvidia.dali import fn, types

    top, left, mirror = window
    sub_mean, ch_mean, ch_std = norm
    inv = (1.0 / ch_std).astype(np.float32)
    offset = types.Constant((-ch_mean * inv).astype(np.float32))
    if shift is not None:
        offset = offset + shift * types.Constant(inv)
    params = fn.cat(_as_param(top), _as_param(left), _as_param(mirror), types.Constant(inv), offset)  # (9,)
    plane = (info.mean_image * inv).transpose(2, 0, 1) if sub_mean else np.zeros((3, 1, 1))
    plane = np.stack([plane, plane[:, :, ::-1]])  # (2, 3, S, S): as is, mirrored
    return op(img, types.Constant(np.ascontiguousarray(plane, np.float32)), params)


def _normalize_chain(img, info: DatasetInfo, crop: int, window, shift, norm, gpu: bool):
    """(x + shift - M[window]) / std = CMN(x; mean=-shift) - CMN(M; window): each term one pass
    that also mirrors and transposes to CHW."""
    from nvidia.dali import fn, types

    top, left, mirror = window
    sub_mean, ch_mean, ch_std = norm
    span = info.size - crop
    std = ch_std.astype(np.float32).tolist()
    mean = ch_mean.astype(np.float32).tolist() if shift is None else types.Constant(ch_mean.astype(np.float32)) - shift
    out = fn.crop_mirror_normalize(img, mirror=mirror, mean=mean, std=std, output_layout="CHW", dtype=types.FLOAT)
    if sub_mean:
        out = out - fn.crop_mirror_normalize(
            _mean_image(info, gpu),
            crop=(crop, crop),
            crop_pos_x=_fraction(left, span),
            crop_pos_y=_fraction(top, span),
            mirror=mirror,
            mean=[0.0, 0.0, 0.0],
            std=std,
            output_layout="CHW",
            dtype=types.FLOAT,
        )
    return out


def _handover(img, window, shift, gpu: bool):
    """GPU: the uint8 window (c, c, 3), mirrored here, and its parameters (6,) = top, left,
    mirror, lighting shift: `finish.WindowFinisher` does the rest in the training process."""
    from nvidia.dali import fn, types

    top, left, mirror = window
    if not (isinstance(mirror, int) and mirror == 0):
        img = fn.flip(img, horizontal=mirror, vertical=0)
    if shift is None:
        shift = types.Constant(np.zeros(3, np.float32))
    params = fn.cat(_as_param(top), _as_param(left), _as_param(mirror), shift)
    return img, params.gpu() if gpu else params


def _ten_views(jpg, info: DatasetInfo, crop: int, norm, gpu: bool, decode: dict):
    """(10, 3, c, c): the centre and four corner windows, then the same five mirrored."""
    from nvidia.dali import fn, types

    sub_mean, ch_mean, ch_std = norm
    span = info.size - crop
    img = fn.cast(fn.decoders.image(jpg, output_type=types.RGB, **decode), dtype=types.FLOAT)
    if sub_mean:
        img = img - _mean_image(info, gpu)
    views = [
        fn.crop_mirror_normalize(
            img,
            crop=(crop, crop),
            crop_pos_x=_fraction(left, span),
            crop_pos_y=_fraction(top, span),
            mirror=mirror,
            mean=ch_mean.astype(np.float32).tolist(),
            std=ch_std.astype(np.float32).tolist(),
            output_layout="CHW",
            dtype=types.FLOAT,
        )
        for mirror in (0, 1)
        for top, left in ten_crop_offsets(info.size, crop)
    ]
    return fn.stack(*views)


def build_pipeline(
    cfg: LoaderConfig,
    info: DatasetInfo,
    paths: list[str],
    gpu: bool,
    device_id,
    seed: int,
    num_threads: int,
    fused: bool | None = None,
    index_paths: list[str] | None = None,
    handover: bool = False,
):
    """The DALI pipeline for one epoch over `paths` (in reading order), this rank's shard.

    Outputs (images, labels), or with `handover` (train and eval modes) (uint8 windows, labels,
    parameters) for `finish.WindowFinisher`.
    fused: use the one-pass CPU operator (None: on the CPU whenever numba is installed; ignored on
    the GPU and with `handover`).
    index_paths: the index of each shard (default: the one beside it).
    """
    from nvidia.dali import fn, pipeline_def, types

    crop = cfg.crop
    handover = handover and cfg.mode != "ten_crop"
    op = None if gpu or handover or fused is False else fused_operator()
    if fused and op is None and not (gpu or handover):
        raise ImgprepError("the loader's fused CPU operator needs numba: pip install numba")
    norm = normalization(cfg.normalize, info.stats)
    decode = _decode_args(gpu, cfg, info.size)

    @pipeline_def(
        batch_size=cfg.rank_batch,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=cfg.prefetch,
        exec_dynamic=True,
    )
    def pipe():
        jpg, label = _read(cfg, info, paths, index_paths)
        shift = _lighting_shift(cfg, info)  # drawn before the window: the random streams keep their order
        if cfg.mode == "ten_crop":
            return _ten_views(jpg, info, crop, norm, gpu, decode), label
        span = info.size - crop
        window = _window(cfg, span)
        top, left, _ = window
        img = fn.decoders.image_crop(
            jpg,
            output_type=types.RGB,
            crop=(crop, crop),
            crop_pos_x=_fraction(left, span),
            crop_pos_y=_fraction(top, span),
            **decode,
        )
        if handover:
            img, params = _handover(img, window, shift, gpu)
            return img, label, params
        if op is not None:
            return _normalize_fused(op, img, info, window, shift, norm), label
        return _normalize_chain(img, info, crop, window, shift, norm, gpu), label

    p = pipe()
    p.build()
    return p


def _index_without(shard: str, keys: set[str], folder: str) -> str:
    """A copy of a shard's index in `folder` where the `jpg` of each sample in `keys` is a good
    sample's: DALI then decodes a valid stand-in, which the loader turns into padding by its key."""
    index = read_dali_index(index_path(shard))
    good = next(e for sample in index if split_key(sample[0][3])[0] not in keys for e in sample if e[0] == "jpg")
    patched = [
        [(e[0], good[1], good[2], e[3]) if e[0] == "jpg" and split_key(e[3])[0] in keys else e for e in sample]
        for sample in index
    ]
    path = os.path.join(folder, os.path.basename(index_path(shard)))
    write_atomic(path, dali_index_text(patched).encode())
    return path


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
    """`make_loader(backend="dali")`.

    On the GPU (train and eval modes) DALI yields uint8 windows and `finish.WindowFinisher`
    normalizes them in one fused op; `handover="on"` runs that path on the CPU too, `"off"` makes
    the whole view in DALI on the GPU too. `cpu_operator="chain"` runs DALI's operator chain on the
    CPU instead of the one-pass operator."""

    def __init__(self, cfg: LoaderConfig, info: DatasetInfo):
        super().__init__(cfg, info)
        self.gpu = self.device == "gpu"
        if self.gpu:
            import torch

            self.device_id = cfg.device_id if cfg.device_id is not None else cfg.rank % torch.cuda.device_count()
        else:
            self.device_id = None
        self.threads = resolve_workers(cfg.workers)
        self.fused = {"auto": None, "fused": True, "chain": False}[cfg.cpu_operator]  # None: where numba is
        self.handover = {"on": True, "off": False}.get(cfg.handover, self.gpu)  # uint8 windows + one fused op
        self._finisher = None
        self._pipe, self._pipe_key = None, None  # the last epoch's pipeline, reused where it reads the same

    def _finish(self):
        """The WindowFinisher of this loader's device, dtype and layout (built once)."""
        if self._finisher is None:
            import torch

            from .finish import WindowFinisher

            dev = torch.device("cuda", self.device_id) if self.gpu else torch.device("cpu")
            norm = normalization(self.cfg.normalize, self.info.stats)
            self._finisher = WindowFinisher(self.info.mean_image, norm, dev, self.dtype, self.cfg.channels_last)
        return self._finisher

    def _batches(self, plan: EpochPlan):
        skip = self.check_shards(plan)  # before DALI reads anything
        with tempfile.TemporaryDirectory(prefix="imgprep-idx-") if skip else contextlib.nullcontext() as tmp:
            yield from self._run_epoch(plan, skip, tmp)

    def _run_epoch(self, plan: EpochPlan, skip: dict[int, set[str]], tmp: str | None):
        import torch

        left = plan.stop - plan.start
        paths = [self.info.shards[i] for i in plan.order]
        indexes = [_index_without(paths[k], skip[i], tmp) if i in skip else None for k, i in enumerate(plan.order)]
        indexes = [p or index_path(paths[k]) for k, p in enumerate(indexes)]
        skipped = {(self.info.shards[i], key) for i, keys in skip.items() for key in keys}
        seed = int(np.random.default_rng([self.cfg.seed, self.epoch, self.cfg.rank]).integers(0, 2**31 - 1))
        handover = self.handover and self.cfg.mode != "ten_crop"
        pipe = self._pipeline(paths, indexes, seed, handover, reusable=self.cfg.mode != "train" and not skip)
        finished = False
        try:
            for _ in range(math.ceil(left / self.cfg.rank_batch)):
                outs = pipe.run()
                images, labels_tl = _to_torch(outs[0], self.gpu, self.device_id), outs[1]
                if handover:
                    images = self._finish()(images, _to_torch(outs[2], self.gpu, self.device_id))
                labels = _to_torch(labels_tl, False).to(torch.int64)
                if skipped:  # a left-out sample decodes a stand-in and becomes padding
                    labels = labels.clone()
                    for j in range(len(labels)):
                        path, _, name = labels_tl[j].source_info().rsplit(":", 2)
                        if (path, split_key(name)[0]) in skipped:
                            labels[j] = PAD_LABEL
                if self.gpu:
                    labels = labels.to(images.device, non_blocking=True)
                valid = min(self.cfg.rank_batch, left)
                left -= valid
                yield images, labels, valid
            finished = True
        finally:
            if not finished:  # stopped inside the epoch: its reader is mid-way, never to be reused
                self._pipe = self._pipe_key = None
            del pipe

    def _pipeline(self, paths: list[str], indexes: list[str], seed: int, handover: bool, reusable: bool):
        """The epoch's DALI pipeline. DALI's reader takes its files and order when it is built, so a
        training epoch (a new shard order and seed) builds its own; an evaluation epoch reads the
        same shards in the same order with no random draws, so the last one's pipeline, which ran a
        whole epoch and stands at the start of the next (pad_last_batch, stick_to_shard), is reused:
        no rebuild and, on a GPU, no new decoder at every validation."""
        key = (tuple(paths), tuple(indexes), handover)
        if reusable and self._pipe is not None and self._pipe_key == key:
            return self._pipe
        self._pipe = self._pipe_key = None  # the old one's buffers go before the new one's come
        pipe = build_pipeline(
            self.cfg, self.info, paths, self.gpu, self.device_id, seed, self.threads, self.fused, indexes, handover
        )
        if reusable:
            self._pipe, self._pipe_key = pipe, key
        return pipe
