"""The DALI backend: one pipeline definition for GPU ("mixed") and CPU decoding.

Graph (train and eval modes), per sample; every step a DALI operator, no Python callback:
  fed per batch from `reader` (this rank's samples in the epoch's order, through the shuffle
  buffer; window (top, left), mirror and lighting drawn in NumPy from (seed, epoch, rank))
    jpg -> decoders.image_crop (only the 224 window is decoded; "mixed" on a GPU, with the
           hardware JPEG decoder where there is one, "cpu" without)
    GPU:  flip -> uint8 window (224, 224, 3) + parameters (6,): top, left, mirror, lighting shift;
          the loader finishes the batch in the training process with one fused op
          (`finish.WindowFinisher`: float, lighting, mean-image window, std, dtype, layout)
    CPU:  one fused operator (numba_function: compiled native code, run per sample on DALI's
          threads) computing the same in a single pass: img[h, w'] / std + offset - M[top+h, left+w'] / std,
          its parameters fed per batch (train mode)
Lighting shift = sum_i (a_i * s_i) * eigvec[i], a ~ N(0, sigma) drawn per image.

Why the GPU hand-over: DALI's stock operators need two crop_mirror_normalize passes and a
subtraction for the per-pixel mean image (42% of the GPU loader's time, measured); one fused
kernel reading uint8 does it in one pass, in the trainer's dtype and layout.
Why the CPU operator: the same three float passes, done in one loop per sample that reads the mean
image window in place (it stays in cache: one image for all samples). Without numba the CPU runs
the operator chain (`_normalize_chain`, the GPU's former path); tests check every path against the
NumPy reference. Outputs are handed to torch without a copy (dynamic executor + DLPack). The pipeline is built
once per loader and fed with `feed_input` (see `reader` for why).
"""

from __future__ import annotations

import functools
import itertools
import os
import time

import numpy as np

from ._mp import resolve_workers
from .augment import lighting_shift, normalization, ten_crop_offsets
from .dataset import DatasetInfo
from .errors import ImgprepError
from .geometry import center_crop_offset
from .loader_base import BaseLoader, EpochPlan, LoaderConfig
from .reader import BatchReader, EpochPositions, LocalShards, buffer_shuffle, epoch_samples

__all__ = ["DaliLoader", "build_pipeline", "fused_params", "host_pool_setting", "use_host_pool"]


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


# DALI takes its host buffers under DALI_MALLOC_POOL_THRESHOLD (default 32 MB) from malloc and
# larger ones from a pool of its own. A CPU batch of decoded windows (128 x 224 x 224 x 3 bytes,
# 19 MB) is under the default: glibc maps it afresh for many batches and the decoder faults its
# pages in (`benchmarks/bench_host_pool.py`, Zen 4: 4.7 faults and 29 us of system time an image
# at steady state, against 0 and 15 with the pool; the first epoch 39k faults instead of 128k).
# At 2 MB (the value NVIDIA's MLPerf training scripts set) every buffer of a batch's size comes
# from the pool and is reused. Set where the user chose neither it nor glibc's mmap settings
# (which DALI derives it from), before DALI's first host allocation: DALI reads it once.
HOST_POOL_THRESHOLD = "2M"
_MALLOC_ENV = ("DALI_MALLOC_POOL_THRESHOLD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")


def host_pool_setting(environ) -> str | None:
    """The DALI_MALLOC_POOL_THRESHOLD to set in `environ`, or None where the user set it or glibc's."""
    return None if any(k in environ for k in _MALLOC_ENV) else HOST_POOL_THRESHOLD


def use_host_pool() -> None:
    """Set DALI's host pool threshold for this process where the user has not (`host_pool_setting`)."""
    value = host_pool_setting(os.environ)
    if value is not None:
        os.environ["DALI_MALLOC_POOL_THRESHOLD"] = value


def _window(cfg: LoaderConfig, span: int):
    """(top, left) of the window and the mirror flag: fed per sample (int32 scalars) in train mode,
    else ints. The decoder gets the window as fractions of the span, which it maps back exactly
    (anchor = round(pos * span)); the mean image uses the same integers."""
    from nvidia.dali import fn

    if cfg.mode != "train":
        return *center_crop_offset(span, span, 0), 0
    if span == 0:  # crop = stored size: one window (and no inputs DALI would prune as unused)
        return 0, 0, fn.external_source(name="mirror")
    return tuple(fn.external_source(name=n) for n in ("top", "left", "mirror"))


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


def _has_lighting(cfg: LoaderConfig) -> bool:
    return cfg.mode == "train" and cfg.lighting_std > 0


def _lighting_shift(cfg: LoaderConfig):
    """The per-sample RGB shift sum_i a_i s_i v_i, fed as float32 (3,) (`DaliLoader._draws`), or None."""
    from nvidia.dali import fn

    return fn.external_source(name="shift") if _has_lighting(cfg) else None


def _mean_image(info: DatasetInfo, gpu: bool):
    """The mean image, (S, S, 3) float32, as a constant on the pipeline's device."""
    from nvidia.dali import types

    m = types.Constant(np.ascontiguousarray(info.mean_image, np.float32), layout="HWC")
    return m.gpu() if gpu else m


def _as_param(v):
    """An int or a per-sample scalar node -> a float32 (1,) node, for the fused operator's parameters."""
    from nvidia.dali import fn, types

    return fn.reshape(fn.cast(types.Constant(v) if isinstance(v, int) else v, dtype=types.FLOAT), shape=[1])


def _mean_plane(info: DatasetInfo, norm):
    """The fused operator's mean input: the mean image / std as a constant (1, 3, S, S), or (1, 3, 1, 1) zeros."""
    from nvidia.dali import types

    sub_mean, _, ch_std = norm
    inv = (1.0 / ch_std).astype(np.float32)
    plane = (info.mean_image * inv).transpose(2, 0, 1) if sub_mean else np.zeros((3, 1, 1))  # (3, S, S)
    return types.Constant(np.ascontiguousarray(plane[None], np.float32))


def fused_params(top, left, mirror, shift, norm) -> np.ndarray:
    """The fused operator's parameters of a batch, float32 (B, 9): top, left, mirror, 1/std (3),
    (shift - channel mean) / std (3), in float32 (the order of DALI's own arithmetic when the
    graph made them: the same numbers). shift: (B, 3) or None."""
    _, ch_mean, ch_std = norm
    inv = (1.0 / ch_std).astype(np.float32)
    offset = np.broadcast_to((-ch_mean * inv).astype(np.float32), (len(mirror), 3))
    if shift is not None:
        offset = offset + np.asarray(shift, np.float32) * inv
    p = np.empty((len(mirror), 9), np.float32)
    p[:, 0], p[:, 1], p[:, 2], p[:, 3:6], p[:, 6:9] = top, left, mirror, inv, offset
    return p


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
    gpu: bool,
    device_id,
    num_threads: int,
    fused: bool | None = None,
    handover: bool = False,
):
    """The DALI pipeline of one loader, for all its epochs: fed per batch (`feed_input`) with
    "jpg" (uint8 [L]) and "label" (int32 scalar), and in train mode "top", "left", "mirror"
    (int32 scalars) and "shift" (float32 (3,), where lighting is on), or on the fused CPU
    operator's graph its parameters "params" (float32 (9,), `fused_params`; in eval mode the
    centre window's, fixed) and in train mode the decoder's window "crop_x", "crop_y" (float32
    fractions of the span): made in NumPy, a batch at a time,
    in place of about a dozen small DALI operators per sample (casts, reshapes, a concatenation, the
    arithmetic of the offset), which left DALI's threads waiting between the decoder and the
    fused operator. `imgprep_feeds` (set on the pipeline) names the inputs it has.

    Outputs (images, labels), or with `handover` (train and eval modes) (uint8 windows, labels,
    parameters) for `finish.WindowFinisher`.
    fused: use the one-pass CPU operator (None: on the CPU whenever numba is installed; ignored on
    the GPU and with `handover`).
    """
    from nvidia.dali import fn, pipeline_def, types

    use_host_pool()
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
        prefetch_queue_depth=1,  # the loader keeps cfg.prefetch batches scheduled itself
        exec_dynamic=True,
    )
    def pipe():
        # no_copy: DALI reads the fed arrays in place (the loader keeps each batch's alive until
        # its outputs are taken); a copy of 128 JPEGs cost the feeding thread ~10 ms a batch
        jpg, label = fn.external_source(name="jpg", no_copy=True), fn.external_source(name="label", no_copy=True)
        if cfg.mode == "ten_crop":
            return _ten_views(jpg, info, crop, norm, gpu, decode), label
        span = info.size - crop
        if op is not None:  # every per-sample number fed (`DaliLoader._draws`, `DaliLoader._fixed_params`)
            if cfg.mode == "train":
                pos = {"crop_pos_x": fn.external_source(name="crop_x"), "crop_pos_y": fn.external_source(name="crop_y")}
                pos = pos if span else {}
            else:
                top, left, _ = _window(cfg, span)
                pos = {"crop_pos_x": _fraction(left, span), "crop_pos_y": _fraction(top, span)}
            img = fn.decoders.image_crop(jpg, output_type=types.RGB, crop=(crop, crop), **pos, **decode)
            return op(img, _mean_plane(info, norm), fn.external_source(name="params")), label
        shift = _lighting_shift(cfg)
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
        return _normalize_chain(img, info, crop, window, shift, norm, gpu), label

    p = pipe()
    p.build()
    p.imgprep_feeds = frozenset(n for n in FEEDS if _has_input(p, n))  # the loader feeds these
    return p


FEEDS = ("jpg", "label", "top", "left", "mirror", "shift", "crop_x", "crop_y", "params")  # what `_draws` may make


def _has_input(pipe, name: str) -> bool:
    try:
        pipe.input_feed_count(name)
    except KeyError:
        return False
    return True


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
        self._pipe, self._pipe_key = None, None  # the pipeline, built on first use (key: handover)
        self._batch_reader = None  # reads each batch into reused buffers (`_reader`)
        self._norm = normalization(cfg.normalize, info.stats)
        self._eval_params = None  # `_fixed_params`  # (subtract the mean image, channel mean, channel std)

    def _finish(self):
        """The WindowFinisher of this loader's device, dtype and layout (built once)."""
        if self._finisher is None:
            import torch

            from .finish import WindowFinisher

            dev = torch.device("cuda", self.device_id) if self.gpu else torch.device("cpu")
            self._finisher = WindowFinisher(self.info.mean_image, self._norm, dev, self.dtype, self.cfg.channels_last)
        return self._finisher

    def _batches(self, plan: EpochPlan):
        source = self.shard_source(plan)  # local shards: checked here, before anything is decoded
        try:
            yield from self._run_epoch(plan, source)
        finally:
            self.corrupt_skipped += source.skipped

    def _inputs(self, plan: EpochPlan, source: LocalShards):
        """The epoch's feeds, one dict per batch ({input name: batch data}), and the number of real
        samples in it. The shuffle buffer holds sample positions; each batch is read from the
        shards when it leaves the buffer (`reader.BatchReader`). Samples left out
        (on_corrupt="skip") decode a stand-in (the previous good sample) with the padding label;
        the last batch is padded with its last sample."""
        cfg, info = self.cfg, self.info
        b, train = cfg.rank_batch, cfg.mode == "train"
        shuffle_rng, draw_rng = (np.random.default_rng([cfg.seed, self.epoch, cfg.rank, k]) for k in (0, 1))
        reader = self._reader()
        reader.new_epoch()
        with EpochPositions(plan.segments(info.counts), source) as positions:
            stream = iter(positions)
            if train:
                size = max(1, min(cfg.shuffle_buffer, plan.stop - plan.start))
                stream = buffer_shuffle(stream, size, shuffle_rng, initial=2 * b)
            first_good = functools.partial(self._first_good, plan, source)
            while items := list(itertools.islice(stream, b)):
                jpgs, labels = reader.read(items, first_good)
                feed = {"jpg": jpgs, "label": labels}  # labels: (b,), one dense tensor
                feed.update(self._draws(draw_rng, b) if train else self._fixed_params())
                yield feed, len(items)

    def _reader(self):
        """The loader's `BatchReader`, kept across epochs (its buffers reused): one buffer for each
        batch that can be in flight (`_run_epoch`: `prefetch` scheduled, one being taken) and the
        one being read. JPEGs go to DALI's CPU decoder as one dense tensor; the GPU's decoders get
        them with exact lengths."""
        if self._batch_reader is None:
            self._batch_reader = BatchReader(self.cfg.rank_batch, max(1, self.cfg.prefetch) + 2, dense=not self.gpu)
        return self._batch_reader

    def _draws(self, rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
        """A batch's random augmentation: lighting coefficients a ~ N(0, sigma) (b, 3), then the
        window's top and left, then the coin flips. Each is fed as one dense array whose first
        axis is the batch: DALI takes it whole, where a list costs a Python conversion per sample
        (a third of the feeding thread's time at batch 128)."""
        cfg, info = self.cfg, self.info
        feed = {}
        shift = None
        if cfg.lighting_std > 0:
            a = rng.normal(0.0, cfg.lighting_std, (b, 3))
            shift = lighting_shift(a, info.stats["eigval"], info.stats["eigvec"], cfg.lighting_scale)  # (b, 3)
            feed["shift"] = shift = np.ascontiguousarray(shift, np.float32)
        span = info.size - cfg.crop
        tl = rng.integers(0, span + 1, (b, 2)).astype(np.int32)
        top, left = np.ascontiguousarray(tl[:, 0]), np.ascontiguousarray(tl[:, 1])
        if span:
            feed.update(top=top, left=left)
        feed["mirror"] = mirror = (rng.random(b) < 0.5).astype(np.int32)
        # the fused CPU operator's form of the same draws: its parameter vectors and the decoder's
        # window as fractions of the span (what `_fraction` computes in the other graphs)
        feed["params"] = fused_params(top, left, mirror, shift, self._norm)
        if span:
            feed["crop_x"], feed["crop_y"] = (
                left.astype(np.float32) / np.float32(span),
                top.astype(np.float32) / np.float32(span),
            )
        return feed

    def _fixed_params(self) -> dict[str, np.ndarray]:
        """Eval mode: the fused CPU operator's parameters of every batch (the centre window, no
        flip, no lighting), made once."""
        if self._eval_params is None:
            b, span = self.cfg.rank_batch, self.info.size - self.cfg.crop
            top, left = center_crop_offset(span, span, 0)
            full = functools.partial(np.full, b, dtype=np.int32)
            self._eval_params = {"params": fused_params(full(top), full(left), full(0), None, self._norm)}
        return self._eval_params

    def _first_good(self, plan: EpochPlan, source: LocalShards) -> bytes:
        """The jpg of this rank's first sample that is not left out (the stand-in's stand-in)."""
        counted = source.skipped  # this second pass leaves the count alone
        for _, jpg, _, left_out in epoch_samples(plan.segments(self.info.counts), source):
            if not left_out:
                source.skipped = counted
                return jpg
        raise ImgprepError(f"{self.cfg.root}: every sample this rank reads was left out (--on-corrupt skip)")

    def _run_epoch(self, plan: EpochPlan, source: LocalShards):
        handover = self.handover and self.cfg.mode != "ten_crop"
        pipe = self._pipeline(handover)
        ahead = max(1, self.cfg.prefetch)  # batches kept scheduled ahead of the one taken
        pending: list[tuple[int, dict]] = []  # (valid count, feed kept alive: no_copy) of the batches scheduled
        taken = 0

        def take():
            return *self._take(pipe, handover), pending.pop(0)[0]

        try:
            for feed, valid in self._inputs(plan, source):
                self._schedule(pipe, feed)
                pending.append((valid, feed))
                if len(pending) > min(ahead, taken):  # ramps up: the first batch is taken as soon as it
                    taken += 1  # is scheduled, not after `ahead` more were read (a shard each, over a network)
                    yield take()
            while pending:
                yield take()
        finally:
            while pending:  # stopped inside the epoch: the batches scheduled are taken and dropped,
                pipe.outputs()  # so that the pipeline starts the next epoch empty (each batch's
                pending.pop(0)  # fed arrays kept until then: no_copy)

    @staticmethod
    def _schedule(pipe, feed: dict) -> None:
        """Feed one batch's inputs ({input name: data}) and schedule its run."""
        for name, data in feed.items():
            if name in pipe.imgprep_feeds:
                pipe.feed_input(name, data)
        pipe.schedule_run()

    def _take(self, pipe, handover: bool):
        """The oldest scheduled batch's images (finished, with the hand-over) and int64 labels,
        as torch tensors on the loader's device."""
        import torch

        outs = pipe.outputs()
        images = _to_torch(outs[0], self.gpu, self.device_id)
        if handover:
            images = self._finish()(images, _to_torch(outs[2], self.gpu, self.device_id))
        labels = _to_torch(outs[1], False).to(torch.int64)
        if self.gpu:
            labels = labels.to(images.device, non_blocking=True)
        return images, labels

    def warm_up(self) -> float:
        """Do the loader's one-time work now rather than in its first epoch: build the pipeline
        (DALI's threads started, the CPU operator loaded, torch imported), run as many batches of
        a grey stand-in image through it at once as an epoch keeps in flight (its buffers
        allocated: on a VM whose page faults cost 3-5 us, the first epoch's fresh memory took
        over a second of system time), outputs dropped, then the shard check of
        `BaseLoader.warm_up`. The batches' draws come from a generator of their own and the
        pipeline keeps no state between batches, so every epoch's batches are those of a loader
        that was not warmed up. Returns the seconds it took."""
        import io

        from PIL import Image

        t = time.perf_counter()
        handover = self.handover and self.cfg.mode != "ten_crop"
        pipe = self._pipeline(handover)
        b, size = self.cfg.rank_batch, self.info.size
        buf = io.BytesIO()
        Image.new("RGB", (size, size), (128, 128, 128)).save(buf, "JPEG", quality=90)
        jpg = np.frombuffer(buf.getvalue(), np.uint8)
        feed = {"jpg": [jpg] * b, "label": np.zeros(b, np.int32)}  # alive until the outputs are taken (no_copy)
        feed.update(self._draws(np.random.default_rng(0), b) if self.cfg.mode == "train" else self._fixed_params())
        inflight = max(1, self.cfg.prefetch) + 1  # as many batches at once as an epoch has: DALI's pools full size
        for _ in range(inflight):
            self._schedule(pipe, feed)
        for _ in range(inflight):
            self._take(pipe, handover)
        return time.perf_counter() - t + super().warm_up()

    def _pipeline(self, handover: bool):
        """The loader's DALI pipeline, built on first use and kept: it holds no file, order or
        random state of its own (all are fed), so every epoch runs on it; on a GPU the decoder is
        initialised once."""
        if self._pipe is None or self._pipe_key != handover:
            self._pipe = self._pipe_key = None  # the old one's buffers go before the new one's come
            self._pipe = build_pipeline(
                self.cfg, self.info, self.gpu, self.device_id, self.threads, self.fused, handover
            )
            self._pipe_key = handover
        return self._pipe
