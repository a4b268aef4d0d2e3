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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a prepared dataset (default: synthesize and prepare one)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    from imgprep._mp import resolve_workers
    from imgprep.bench import baseline_loader, loader_rate
    from imgprep.loaders import make_loader
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize

    w = resolve_workers(a.workers)
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
    steps = max(2, (a.images // b) - 1)
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
    results, device = {}, None
    for name, make in variants.items():
        rates = []
        for _ in range(a.repeats):
            loader = make()
            device = getattr(loader, "device", device) if name == "dali full" else device
            rates.append(loader_rate(loader, steps))
        results[name] = {"median_images_per_second": statistics.median(rates), "min": min(rates), "max": max(rates)}
    base = results["baseline"]["median_images_per_second"]
    print(f"train mode, batch {b}, {w} workers, {steps} timed batches, {a.repeats} runs; DALI on {device}")
    print(f"{'variant':16s} {'img/s':>8s} {'min':>8s} {'max':>8s} {'vs baseline':>12s}")
    for k, r in results.items():
        print(
            f"{k:16s} {r['median_images_per_second']:8.0f} {r['min']:8.0f} {r['max']:8.0f} "
            f"{r['median_images_per_second'] / base:11.2f}x"
        )
    full, basic = results["dali full"]["median_images_per_second"], results["dali basic"]["median_images_per_second"]
    print(f"lighting + mean image cost vs crop+flip+normalize: {100 * (basic / full - 1):.1f}% more time")
    results["lighting_and_mean_image_extra_time_percent"] = round(100 * (basic / full - 1), 1)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"batch_size": b, "workers": w, "device": device, "results": results}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
