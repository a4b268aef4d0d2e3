"""Disk space of prepared shards per sample, on photo-like synthetic images, extrapolated to ImageNet.

Photographs have a power spectrum falling roughly as 1/f^2 (amplitude 1/f^a, a ~ 1); the
synthetic set of the demo is far smoother than that and would understate the bytes. This script
draws images with amplitude spectra 1/f^a (a = 0.8: more texture than most photos, 1.0: typical,
1.2: smoother), colour channels correlated as in photos, at ImageNet-like sizes (shorter side
300-500), saves them as JPEG quality 90 (as ImageNet's sources roughly are), runs
`imgprep prepare` (256x256, JPEG quality 95) and divides everything it wrote (shards, DALI index
files, manifest, statistics) by the samples.

Usage: python benchmarks/bench_disk.py [--images 600] [--out docs/disk.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


def photo_like(rng: np.random.Generator, h: int, w: int, a: float) -> np.ndarray:
    """(h, w, 3) uint8 with amplitude spectrum ~ 1/f^a per channel and photo-like channel correlation."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    amp = f**-a
    amp[0, 0] = 0.0
    planes = []
    for _ in range(3):
        spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
        planes.append(np.fft.irfft2(spec, s=(h, w)))
    x = np.stack(planes, -1)
    x /= x.std()
    mix = np.array([[1.0, 0.9, 0.8], [0.0, 0.35, 0.3], [0.0, 0.0, 0.3]])  # mostly luminance, some colour
    x = x @ (mix * rng.uniform(0.8, 1.2, (3, 1)))
    x = 128 + 45 * x + rng.uniform(-30, 30, 3)
    return np.clip(x, 0, 255).astype(np.uint8)


def measure(a: float, n: int, work: str) -> dict:
    from imgprep.prepare import PrepareConfig, prepare

    rng = np.random.default_rng(int(a * 100))
    src = os.path.join(work, f"src-{a}")
    for i in range(n):
        d = os.path.join(src, "train", f"c{i % 10}")
        os.makedirs(d, exist_ok=True)
        short, long_ = int(rng.integers(300, 501)), int(rng.integers(400, 641))
        h, w = (short, long_) if rng.random() < 0.7 else (long_, short)  # mostly landscape
        Image.fromarray(photo_like(rng, h, w, a)).save(os.path.join(d, f"{i}.jpg"), quality=90)
    out = os.path.join(work, f"out-{a}")
    prepare(PrepareConfig(src, out, shard_size=100), progress=False, log=lambda s: None)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    shards = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs if f.endswith(".tar"))
    per = total / n
    return {
        "spectrum_exponent": a,
        "images": n,
        "bytes_per_sample": round(per),
        "shard_bytes_per_sample": round(shards / n),
        "imagenet_train_gb": round(per * IMAGENET_TRAIN / 1e9, 1),
        "imagenet_train_and_val_gb": round(per * (IMAGENET_TRAIN + IMAGENET_VAL) / 1e9, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from imgprep.report import environment

    work = tempfile.mkdtemp(prefix="bench-disk-")
    try:
        rows = [measure(a, args.images, work) for a in (0.8, 1.0, 1.2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "disk", "environment": environment(), "results": rows}
    print(json.dumps(result["results"], indent=2))
    if args.out:
        from imgprep.fileio import write_json_atomic

        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
