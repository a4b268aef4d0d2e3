"""`imgprep bench prepare|load`: throughput against the baselines a user would otherwise pick.

Every figure is the median of `repeats` runs, reported with its spread; results are returned as
a dict (configuration, environment, figures) that the CLI saves as JSON and plots.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from ._mp import cpu_count
from .config import Settings, setting
from .dataset import DatasetInfo
from .errors import ImgprepError
from .geometry import train_crop
from .loader_base import BACKENDS, DEVICES, CacheSettings
from .report import environment, summarize
from .timing import time_loader

__all__ = [
    "PrepareBenchConfig",
    "bench_prepare",
    "LoadBenchConfig",
    "bench_load",
    "NAIVE_PILLOW",
    "BaselineTransform",
    "baseline_loader",
    "loader_rate",
    "time_command",
]

# The naive script a user writes first: one process, Pillow's defaults, one file per image.
NAIVE_PILLOW = r"""
import sys, os
from PIL import Image
files, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for i, f in enumerate(open(files).read().split("\n")):
    if not f:
        continue
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)))
    l, t = (im.size[0] - 256) // 2, (im.size[1] - 256) // 2
    im.crop((l, t, l + 256, t + 256)).save(os.path.join(dst, f"{i}.jpg"), quality=95)
"""


@dataclass(frozen=True)
class PrepareBenchConfig(Settings):
    """Settings of `imgprep bench prepare`."""

    src: str
    images: int = setting(1000, "Images taken from SRC.", min=1)
    workers: tuple[int, ...] = setting((), "Worker counts, e.g. 1,2,4 [default: 1, 2, 4 ... cores].")
    repeats: int = setting(3, "Runs per figure (median and spread reported).", min=1)
    shard_size: int = setting(100, "Samples per shard.", min=1)


def _subset(src: str, n: int, root: str) -> list[str]:
    """Copy the first n images of SRC's training split (any layout) to root/train/<class>/;
    returns their paths."""
    from .sources import discover

    index = discover(src)
    split = "train" if "train" in index.splits else next(iter(index.splits))
    items = index.splits[split][:n]
    if not items:
        raise ImgprepError(f"{src}: no images to benchmark")
    paths = []
    for i, it in enumerate(items):
        d = os.path.join(root, "train", f"c{it.label:05d}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:07d}{os.path.splitext(it.ref)[1] or '.jpg'}")
        with open(p, "wb") as f:
            f.write(index.source.read(it))
        paths.append(p)
    return paths


def time_command(cmd: list[str], clean: str | None = None) -> float:
    """Seconds one whole command takes (after removing `clean`); ImgprepError when it fails."""
    if clean:
        shutil.rmtree(clean, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise ImgprepError(f"benchmark command failed: {' '.join(cmd[:4])} ...: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t


def bench_prepare(cfg: PrepareBenchConfig, log=print) -> dict:
    """Images/s of `imgprep prepare` (whole process) per worker count, and of the naive script."""
    cores = cpu_count()
    workers = list(cfg.workers) or sorted({1, *[w for w in (2, 4, 8, 16, 32, 64) if w <= cores], cores})
    work = tempfile.mkdtemp(prefix="imgprep-bench-")
    try:
        paths = _subset(cfg.src, cfg.images, os.path.join(work, "src"))
        n = len(paths)
        lst = os.path.join(work, "files.txt")
        with open(lst, "w") as f:
            f.write("\n".join(paths))
        out = os.path.join(work, "out")
        runs = {"naive Pillow": ([sys.executable, "-c", NAIVE_PILLOW, lst, out], out)}
        for w in workers:
            runs[f"imgprep w={w}"] = (
                [
                    sys.executable,
                    "-m",
                    "imgprep.cli.main",
                    "prepare",
                    os.path.join(work, "src"),
                    out,
                    "--no-progress",
                    "--shard-size",
                    str(cfg.shard_size),
                    "--workers",
                    str(w),
                ],
                out,
            )
        rows = []
        for name, (cmd, clean) in runs.items():
            rates = [n / time_command(cmd, clean) for _ in range(cfg.repeats)]
            s = summarize(rates)
            rows.append(
                {"variant": name, "images_per_second": s["median"], "min": s["min"], "max": s["max"], "runs": s["runs"]}
            )
            log(f"  {name}: {s['median']:.0f} img/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["images_per_second"]
    for r in rows:
        r["vs_naive"] = r["images_per_second"] / base
    return {"benchmark": "prepare", "config": asdict(cfg), "images": n, "environment": environment(), "results": rows}


LOADERS = (*(b for b in BACKENDS if b != "auto"), "baseline")  # auto is one of the other two


class BaselineTransform:
    """torchvision-style: PIL decode, random 224 crop, flip, per-channel normalize, CHW tensor."""

    def __init__(self, mean, std, crop: int = 224):
        self.mean, self.std = np.array(mean, np.float32) / 255, np.array(std, np.float32) / 255
        self.crop = crop

    def __call__(self, sample):
        import torch
        from PIL import Image

        img = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        c = self.crop
        top, left = np.random.randint(0, img.height - c + 1), np.random.randint(0, img.width - c + 1)
        img = img.crop((left, top, left + c, top + c))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, np.float32) / 255 - self.mean) / self.std
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), int(sample["cls"])


def baseline_loader(data: str, batch_size: int, workers: int):
    """The hand-written torchvision-style pipeline: webdataset + DataLoader workers."""
    import torch
    import webdataset as wds

    from ._mp import pool_context

    info = DatasetInfo.load(data, "train")
    crop = train_crop(info.size)
    ds = (
        wds.WebDataset(info.shards, shardshuffle=False, empty_check=False, nodesplitter=None)
        .shuffle(1000)
        .map(BaselineTransform(info.stats["mean"], info.stats["std"], crop))
        .batched(batch_size)
    )
    return torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, multiprocessing_context=pool_context() if workers else None
    )


def loader_rate(loader, steps: int) -> float:
    """Images/s of a loader over `steps` batches after one warm-up batch (restarting epochs as needed)."""
    return time_loader(loader, steps=steps + 1, warmup=1)["images_per_second"]


@dataclass(frozen=True)
class LoadBenchConfig(CacheSettings):
    """Settings of `imgprep bench load` (DATA may be a URL: the cache settings apply)."""

    data: str
    batch_sizes: tuple[int, ...] = setting((64, 256), "Batch sizes.")
    workers: tuple[int, ...] = setting((), "Worker counts [default: 1 and all cores].")
    steps: int = setting(10, "Timed batches per figure.", min=1)
    repeats: int = setting(3, "Runs per figure (median and spread reported).", min=1)
    device: str = setting("auto", "Where DALI decodes.", choices=DEVICES)
    loaders: tuple[str, ...] = setting(LOADERS, "Loaders to time.", choices=LOADERS)


def _make_bench_loader(cfg: LoadBenchConfig, name: str, batch_size: int, workers: int):
    from .loaders import make_loader

    if name == "baseline":
        return baseline_loader(cfg.data, batch_size, workers)
    device = cfg.device if name == "dali" else "cpu"
    return make_loader(
        cfg.data, "train", batch_size, backend=name, device=device, workers=workers, **cfg.cache_settings()
    )


def bench_load(cfg: LoadBenchConfig, log=print) -> dict:
    """Images/s of the DALI pipeline, the torch fallback and the torchvision-style baseline."""

    from .fileio import is_url

    if is_url(cfg.data) and "baseline" in cfg.loaders:
        raise ImgprepError(f"{cfg.data}: the baseline loader reads local files only; pass --loaders dali,torch")
    cores = cpu_count()
    workers = list(cfg.workers) or sorted({1, cores})
    rows, device = [], None
    for b in cfg.batch_sizes:
        for w in workers:
            for name in cfg.loaders:
                rates = []
                for _ in range(cfg.repeats):
                    loader = _make_bench_loader(cfg, name, b, w)
                    if name == "dali":
                        device = loader.device
                    rates.append(loader_rate(loader, cfg.steps))
                s = summarize(rates)
                label = f"dali ({device})" if name == "dali" else name
                rows.append(
                    {
                        "loader": label,
                        "batch_size": b,
                        "workers": w,
                        "images_per_second": s["median"],
                        "min": s["min"],
                        "max": s["max"],
                        "runs": s["runs"],
                    }
                )
                log(f"  {label} batch {b} workers {w}: {s['median']:.0f} img/s")
    for r in rows:
        base = (
            next(
                x["images_per_second"]
                for x in rows
                if x["loader"] == "baseline" and x["batch_size"] == r["batch_size"] and x["workers"] == r["workers"]
            )
            if "baseline" in cfg.loaders
            else None
        )
        r["vs_baseline"] = r["images_per_second"] / base if base else None
    return {"benchmark": "load", "config": asdict(cfg), "environment": environment(), "results": rows}
