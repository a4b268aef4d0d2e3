"""`prepare` reading the ILSVRC2012 archives in place vs the same images as extracted folders.

Builds `ILSVRC2012_img_train.tar` (a tar of per-class tars) and the equivalent `train/<wnid>/`
folders from the same photo-like 500x375 JPEGs, then times `imgprep prepare` (whole process) on
each, with 1 and 2 workers. The page cache is warm for both (each source is read once first).

Usage: python benchmarks/bench_sources.py [--images 6000] [--repeats 3] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prepare import make_images  # noqa: E402

from imgprep.bench import time_command as timed  # noqa: E402


def build_archive(folders: str, root: str) -> None:
    """ILSVRC2012_img_train.tar from folders/train/<class>/*.jpg (class names made WNID-like)."""
    os.makedirs(root, exist_ok=True)
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c in sorted(os.listdir(os.path.join(folders, "train"))):
            wnid = f"n{int(c[1:]):08d}"
            b = io.BytesIO()
            with tarfile.open(fileobj=b, mode="w") as inner:
                d = os.path.join(folders, "train", c)
                for f in sorted(os.listdir(d)):
                    inner.add(os.path.join(d, f), f"{wnid}_{f[:-4]}.JPEG")
            ti = tarfile.TarInfo(f"{wnid}.tar")
            ti.size = b.tell()
            b.seek(0)
            outer.addfile(ti, b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="imgprep-bench-")
    folders = os.path.join(work, f"src-{a.images}")
    archive = os.path.join(work, f"ilsvrc-{a.images}")
    if not os.path.isdir(folders):
        make_images(folders, a.images)
    if not os.path.isdir(archive):
        build_archive(folders, archive)
    out = os.path.join(work, "out")
    results = {}
    for name, src in (("folders", folders), ("archive", archive)):
        for w in (1, 2):
            cmd = [
                sys.executable,
                "-m",
                "imgprep.cli.main",
                "prepare",
                src,
                out,
                "--no-progress",
                "--shard-size",
                "100",
                "--workers",
                str(w),
            ]
            timed(cmd, out)  # warm the page cache
            rates = [a.images / timed(cmd, out) for _ in range(a.repeats)]
            results[f"{name} w={w}"] = {
                "median_images_per_second": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            }
    print(f"{a.images} images 500x375, {a.repeats} runs each")
    print(f"{'source':12s} {'img/s':>8s} {'min':>8s} {'max':>8s}")
    for k, r in results.items():
        print(f"{k:12s} {r['median_images_per_second']:8.0f} {r['min']:8.0f} {r['max']:8.0f}")
    for w in (1, 2):
        ratio = (
            results[f"archive w={w}"]["median_images_per_second"]
            / results[f"folders w={w}"]["median_images_per_second"]
        )
        print(f"archive / folders at {w} worker{'s' * (w > 1)}: {ratio:.2f}x")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"images": a.images, "repeats": a.repeats, "results": results}, f, indent=2)
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
