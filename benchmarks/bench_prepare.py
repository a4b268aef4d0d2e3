"""Images/s of `imgprep prepare` against a naive Pillow script and against decode alone.

Every variant runs as its own process on the same photo-like JPEGs of ImageNet's typical size
(500x375, ~65 KB), whole process included (interpreter start, imports, writing the output):

  naive (bicubic)   open, convert("RGB"), resize shorter side to 256 with Pillow's default
                    filter, centre crop, save JPEG q95; one process, one file per image
  naive (bilinear)  the same with Image.BILINEAR (torchvision's Resize filter)
  decode only       Pillow open + convert("RGB") of every file, nothing else: the floor
  imgprep w=1,2     `imgprep prepare --workers N` (shards, index, stats, manifest included)

Usage: python benchmarks/bench_prepare.py [--images 6000] [--repeats 3] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile

NAIVE = r"""
import sys, os, glob
from PIL import Image
src, dst, flt = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(dst, exist_ok=True)
for i, f in enumerate(sorted(glob.glob(os.path.join(src, "*", "*", "*.jpg")))):
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    size = (round(w * s), round(h * s))
    im = im.resize(size) if flt == "default" else im.resize(size, Image.BILINEAR)
    l, t = (im.size[0] - 256) // 2, (im.size[1] - 256) // 2
    im.crop((l, t, l + 256, t + 256)).save(os.path.join(dst, f"{i}.jpg"), quality=95)
"""

DECODE = r"""
import sys, os, glob
from PIL import Image
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "*", "*.jpg"))):
    Image.open(f).convert("RGB")
"""


def make_images(root: str, n: int) -> None:
    """n photo-like 500x375 JPEGs (q90) in root/train/<class>/."""
    import numpy as np
    from PIL import Image

    from imgprep.synth import synth_image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = os.path.join(root, "train", f"c{i % 10}")
        os.makedirs(d, exist_ok=True)
        img = synth_image(rng, i % 10, 375, 375)
        Image.fromarray(img).resize((500, 375), Image.LANCZOS).save(os.path.join(d, f"{i:06d}.jpg"), quality=90)


def main() -> None:
    from imgprep.bench import time_command

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--workdir", default=None, help="keep the images here between runs")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="imgprep-bench-")
    src = os.path.join(work, f"src-{a.images}")
    if not os.path.isdir(src):
        make_images(src, a.images)
    out = os.path.join(work, "out")
    py = sys.executable
    # Small shards so that both workers stay busy to the end (ImageNet has 1282 shards of 1000).
    imgprep = [py, "-m", "imgprep.cli.main", "prepare", src, out, "--no-progress", "--shard-size", str(a.shard_size)]
    variants = {
        "naive (bicubic)": ([py, "-c", NAIVE, src, out, "default"], out),
        "naive (bilinear)": ([py, "-c", NAIVE, src, out, "bilinear"], out),
        "decode only": ([py, "-c", DECODE, src], None),
        "imgprep w=1": (imgprep + ["--workers", "1"], out),
        "imgprep w=2": (imgprep + ["--workers", "2"], out),
    }
    results = {}
    for name, (cmd, clean) in variants.items():
        times = [time_command(cmd, clean) for _ in range(a.repeats)]
        rates = [a.images / t for t in times]
        results[name] = {"median_images_per_second": statistics.median(rates), "min": min(rates), "max": max(rates)}
    base = results["naive (bicubic)"]["median_images_per_second"]
    print(f"{a.images} images 500x375, {a.repeats} runs each, {os.cpu_count()} cores")
    print(f"{'variant':18s} {'img/s':>8s} {'min':>8s} {'max':>8s} {'vs naive':>9s}")
    for name, r in results.items():
        m = r["median_images_per_second"]
        print(f"{name:18s} {m:8.0f} {r['min']:8.0f} {r['max']:8.0f} {m / base:8.2f}x")
    w1, w2 = results["imgprep w=1"]["median_images_per_second"], results["imgprep w=2"]["median_images_per_second"]
    print(
        f"scaling 1 -> 2 workers: {w2 / w1:.2f}x; imgprep w=1 at "
        f"{w1 / results['decode only']['median_images_per_second']:.0%} of decode-only speed"
    )
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(
                {
                    "machine": platform.platform(),
                    "python": platform.python_version(),
                    "cores": os.cpu_count(),
                    "images": a.images,
                    "repeats": a.repeats,
                    "results": results,
                },
                f,
                indent=2,
            )
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
