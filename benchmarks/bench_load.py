"""Loader throughput on the same prepared shards (train mode, batch 128 by default):

  dali full        DALI pipeline, paper augmentation (random 224 crop, flip, PCA lighting,
                   mean-image subtraction); mixed decode on a GPU, CPU decode otherwise (there
                   the one-pass fused operator)
  dali full chain  the same on the CPU with the GPU's operator chain instead of the fused operator
  dali basic       the same pipeline with lighting off and per-channel normalization only
                   (crop + flip + normalize): the cost of lighting + mean image is full vs basic
  torch full       imgprep's PyTorch fallback (webdataset + DataLoader workers), full augmentation
  baseline         torchvision-style: webdataset + DataLoader workers, PIL decode, random crop,
                   flip, per-channel normalize (what a user writes by hand), same worker count
  dali decode      DALI's own webdataset reader + CPU image decoder, nothing else: the bound
  dali stock       NVIDIA's stock pipeline: DALI's reader, CPU decode, crop_mirror_normalize
                   (random 224 window, coin-flip mirror, per-channel mean/std), CHW float
  timm, litdata    the peers' loaders (`load_peers.py`), run by `--peers-python PY` in an environment
                   that has them, over an ImageFolder of the same stored JPEGs; skipped without it
Every variant uses the same threads (`--workers`); the figures are steady state (after
`--warmup` batches), the variants interleaved `--repeats` times.

Usage: python benchmarks/bench_load.py [--data DIR] [--images 2000] [--batch-size 128] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dali_native(data: str, batch: int, threads: int, stock: bool):
    """DALI's own reader over the shards (no imgprep code), decode only or the stock pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    from imgprep.dataset import DatasetInfo
    from imgprep.shards import index_path

    info = DatasetInfo.load(data, "train")
    mean, std = info.stats["mean"], info.stats["std"]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=info.shards, index_paths=[index_path(p) for p in info.shards], ext=["jpg", "cls"],
            random_shuffle=True, initial_fill=1024, name="r",
        )  # fmt: skip
        img = fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
        if stock:
            img = fn.crop_mirror_normalize(
                img, dtype=types.FLOAT, output_layout="CHW", crop=(224, 224),
                crop_pos_x=fn.random.uniform(range=(0.0, 1.0)), crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
                mirror=fn.random.coin_flip(), mean=[float(m) for m in mean], std=[float(x) for x in std],
            )  # fmt: skip
        return img, cls

    p = pipe()
    p.build()
    return p


def _pipe_rate(p, batch: int, warmup: int, steps: int) -> tuple[float, float | None]:
    """Images/s of a DALI pipeline run in a loop, and the machine's cores busy meanwhile, timed
    as the loaders are (`Throughput`: the clock starts after `warmup` runs)."""
    from imgprep.timing import Throughput

    timer = Throughput(warmup)
    for _ in range(warmup + steps):
        p.run()
        timer.step(batch)
    r = timer.result()
    return r["images_per_second"], r["cores_busy"]


def _loader_steady(make, warmup: int, steps: int) -> tuple[float, float | None]:
    from imgprep.timing import time_loader

    r = time_loader(make(), steps=warmup + steps, warmup=warmup)
    return r["images_per_second"], r["cores_busy"]


def _image_folder(data: str, folder: str) -> str:
    """The train shards' stored JPEGs as an ImageFolder (c<label>/<key>.jpg), for the peers."""
    from imgprep.dataset import DatasetInfo
    from imgprep.shards import iter_samples

    if not os.path.isdir(folder):
        for shard in DatasetInfo.load(data, "train").shards:
            for key, c in iter_samples(shard):
                d = os.path.join(folder, f"c{int(c['cls'])}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"{key}.jpg"), "wb") as f:
                    f.write(c["jpg"])
    return folder


def _peer_rates(py: str, folder: str, b: int, w: int, warmup: int, steps: int) -> dict:
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_peers.py")
    args = [py, script, folder, "--batch-size", str(b), "--workers", str(w), "--warmup", str(warmup)]
    r = subprocess.run([*args, "--steps", str(steps)], capture_output=True, text=True)
    if r.returncode:
        print(f"note: the peers failed ({r.stderr.strip().splitlines()[-1:]}); left out")
        return {}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a prepared dataset (default: synthesize and prepare one)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5, help="batches before the timing starts")
    ap.add_argument("--steps", type=int, default=0, help="timed batches (0: about an epoch)")
    ap.add_argument("--peers-python", default=None, help="an interpreter with timm and litdata installed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--plot", default=None, help="a PNG chart of the figures")
    a = ap.parse_args()
    from imgprep._mp import resolve_workers
    from imgprep.bench import baseline_loader
    from imgprep.dali_loader import use_host_pool
    from imgprep.loaders import make_loader
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize

    w = resolve_workers(a.workers)
    use_host_pool()  # every DALI variant of this process with the loader's host pool (DALI reads it once)
    data = a.data
    if data is None:
        work = tempfile.mkdtemp(prefix="imgprep-bench-")
        synthesize(
            SynthConfig(os.path.join(work, "src"), classes=10, per_class=a.images // 10, val_per_class=0), workers=w
        )
        data = os.path.join(work, "data")
        prepare(
            PrepareConfig(os.path.join(work, "src"), data, shard_size=250, workers=w),
            progress=False,
            log=lambda s: None,
        )
    b = a.batch_size
    if a.data is not None:  # about an epoch of the dataset given, not of --images
        from imgprep.dataset import open_dataset

        a.images = open_dataset(data).info("train", need_stats=False).total
    steps = a.steps or max(2, (a.images // b) - 1)
    variants = {
        "dali full": lambda: make_loader(data, "train", b, backend="dali", device=a.device, workers=w),
        "dali full chain": lambda: make_loader(
            data, "train", b, backend="dali", device="cpu", workers=w, cpu_operator="chain"
        ),
        "dali basic": lambda: make_loader(
            data, "train", b, backend="dali", device=a.device, workers=w, lighting_std=0.0, normalize="channel"
        ),
        "torch full": lambda: make_loader(data, "train", b, backend="torch", device="cpu", workers=w),
        "baseline": lambda: baseline_loader(data, b, w),
    }
    native = {"dali decode": False, "dali stock": True}
    runs, device = {k: [] for k in [*variants, *native]}, None
    busy: dict[str, list] = {k: [] for k in runs}  # the machine's cores busy during each timed run
    for _ in range(a.repeats):  # interleaved
        for name, make in variants.items():
            if name == "dali full":
                device = getattr(make(), "device", device)
            rate, cores = _loader_steady(make, a.warmup, steps)
            runs[name].append(rate)
            busy[name].append(cores)
        for name, stock in native.items():
            rate, cores = _pipe_rate(_dali_native(data, b, w, stock), b, a.warmup, steps)
            runs[name].append(rate)
            busy[name].append(cores)
        if a.peers_python:
            folder = _image_folder(data, os.path.join(os.path.dirname(os.path.abspath(data)), "imagefolder"))
            for name, rate in _peer_rates(a.peers_python, folder, b, w, a.warmup, steps).items():
                runs.setdefault(name, []).append(rate)
    results = {}
    for name, rates in runs.items():
        results[name] = {
            "median_images_per_second": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "runs": [round(r, 1) for r in rates],
        }
        seen = [c for c in busy.get(name, []) if c is not None]  # the peers run elsewhere: not measured
        if seen:
            results[name]["cores_busy_median"] = statistics.median(seen)
    base = results["baseline"]["median_images_per_second"]
    print(f"train mode, batch {b}, {w} workers, {steps} timed batches, {a.repeats} runs; DALI on {device}")
    print(f"{'variant':16s} {'img/s':>8s} {'min':>8s} {'max':>8s} {'vs baseline':>12s} {'cores busy':>11s}")
    for k, r in results.items():
        cores = f"{r['cores_busy_median']:.2f}" if "cores_busy_median" in r else "-"
        print(
            f"{k:16s} {r['median_images_per_second']:8.0f} {r['min']:8.0f} {r['max']:8.0f} "
            f"{r['median_images_per_second'] / base:11.2f}x {cores:>11s}"
        )
    full, basic = results["dali full"]["median_images_per_second"], results["dali basic"]["median_images_per_second"]
    print(f"lighting + mean image cost vs crop+flip+normalize: {100 * (basic / full - 1):.1f}% more time")
    results["lighting_and_mean_image_extra_time_percent"] = round(100 * (basic / full - 1), 1)
    dec, stock = results["dali decode"]["median_images_per_second"], results["dali stock"]["median_images_per_second"]
    ratios = {"dali full / dali decode": full / dec, "dali full / dali stock": full / stock}
    # the same ratios within each round (the variants of a round ran minutes apart, not hours):
    # on a VM whose speed drifts by 1.5x this is the steadier figure
    for other in ("dali decode", "dali stock"):
        per = [f / o for f, o in zip(runs["dali full"], runs[other], strict=True)]
        ratios[f"dali full / {other} per round"] = {"median": statistics.median(per), "min": min(per), "max": max(per)}
    print(f"dali full at {full / dec:.0%} of decoding alone, {full / stock:.2f}x the stock pipeline")
    pd, ps = ratios["dali full / dali decode per round"], ratios["dali full / dali stock per round"]
    print(
        f"per round: {pd['median']:.0%} of decoding alone ({pd['min']:.0%}-{pd['max']:.0%}), "
        f"{ps['median']:.2f}x the stock pipeline ({ps['min']:.2f}-{ps['max']:.2f})"
    )
    if a.json_out:
        from imgprep.report import environment

        with open(a.json_out, "w") as f:
            cmd = f"python benchmarks/bench_load.py --batch-size {b} --repeats {a.repeats}"
            cmd += f" --data DIR ({a.images} images)" if a.data else f" --images {a.images}"
            out = {"command": cmd, "machine": environment(), "batch_size": b, "workers": w, "device": device,
                   "warmup": a.warmup, "steps": steps, "results": results, "ratios": ratios,
                   "dali_malloc_pool_threshold": os.environ.get("DALI_MALLOC_POOL_THRESHOLD")}  # fmt: skip
            json.dump(out, f, indent=2)
    if a.plot:
        from imgprep.report import environment, variants_chart

        figures = {k: v for k, v in results.items() if isinstance(v, dict)}
        variants_chart(a.plot, figures, "baseline", f"loaders, train mode, batch {b}, {w} workers", environment())


if __name__ == "__main__":
    sys.exit(main())
