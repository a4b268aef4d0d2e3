"""Where one `prepare` worker's time goes, per image: read, decode, resize + crop, encode, statistics,
checksums, tar and index writing; beside the bare codec chain (simplejpeg decode, OpenCV
INTER_LINEAR resize, centre crop, simplejpeg encode) and a whole `prepare --workers 1`.

The images are photo-like (1/f amplitude spectra, as in bench_disk.py), shorter side 300-500,
aspect 0.75-1.33, JPEG q90. The stages run image by image as a worker runs them (`prepare._samples`:
one `geometry.Scratch` of reused arrays for the decode, resize and encode, the statistics added
before the next image, its members written to the tar), each call timed on its own; the pass over
the images is repeated and the median per image reported (min-max beside it). `--fresh` times
the stages over lists of fresh arrays instead, a stage at a time (this script's former form).
The shard writer computes the CRC-32 and the tar's sha256 itself: the checksums stage times them
apart, and they are inside the tar stage too (the sum of the stages counts them twice).

Usage: python benchmarks/profile_prepare.py [--images 300] [--repeats 5] [--fresh]
       [--json-out docs/prepare_profile.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _images(n: int, root: str) -> list[str]:
    from bench_disk import photo_like
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        short = int(rng.integers(300, 501))
        aspect = float(rng.uniform(0.75, 1.33))
        h, w = (short, int(short * aspect)) if aspect >= 1 else (int(short / aspect), short)
        d = os.path.join(root, "train", f"c{i % 4}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:05d}.jpg")
        Image.fromarray(photo_like(rng, h, w, 1.0)).save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


STAGES = (
    "read",
    "decode",
    "resize + crop (antialiased)",
    "encode",
    "statistics",
    "checksums (CRC-32, sha256)",
    "tar + index + json",
)


def _worker_stages(paths: list[str], size: int, quality: int, tmp: str) -> dict[str, float]:
    """Seconds per stage over all images, run image by image with one Scratch as a worker runs them."""
    from imgprep.codec import decode_rgb, encode_jpeg
    from imgprep.geometry import Scratch, resize_center_crop
    from imgprep.shards import ShardWriter, sample_crc
    from imgprep.stats import StatsAccumulator

    t = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    scratch, acc = Scratch(), StatsAccumulator(size)
    w = ShardWriter(os.path.join(tmp, "profile.tar"))
    for k, p in enumerate(paths):
        t0 = clock()
        data = _read(p)
        t1 = clock()
        img = decode_rgb(data, p, min_side=size, scratch=scratch)
        t2 = clock()
        pixels = resize_center_crop(img.pixels, size, scratch)
        t3 = clock()
        jpeg = encode_jpeg(pixels, quality, scratch)
        t4 = clock()
        acc.add(pixels)
        t5 = clock()
        sample = {"cls": b"1", "jpg": jpeg, "json": json.dumps({"source": p, "label": 1}).encode()}
        sample_crc(sample)
        hashlib.sha256(jpeg).digest()
        t6 = clock()
        w.write(f"{k:08d}", sample)
        t7 = clock()
        for name, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6), strict=True):
            t[name] += dt
    t0 = clock()
    w.close()
    t["tar + index + json"] += clock() - t0
    return t


def _stages(paths: list[str], size: int, quality: int, tmp: str) -> dict[str, float]:
    """Seconds per stage over all images, a stage at a time over lists of fresh arrays."""
    from imgprep.codec import decode_rgb, encode_jpeg
    from imgprep.geometry import resize_center_crop
    from imgprep.shards import ShardWriter, sample_crc
    from imgprep.stats import StatsAccumulator

    t = {}
    t0 = time.perf_counter()
    data = [_read(p) for p in paths]
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [decode_rgb(b, p, min_side=size).pixels for b, p in zip(data, paths, strict=True)]
    t["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = [resize_center_crop(a, size) for a in decoded]
    t["resize + crop (antialiased)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jpegs = [encode_jpeg(a, quality) for a in stored]
    t["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = StatsAccumulator(size)
    for a in stored:
        acc.add(a)
    t["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in jpegs:
        sample_crc({"jpg": j, "cls": b"1"})
        hashlib.sha256(j).digest()
    t["checksums (CRC-32, sha256)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = ShardWriter(os.path.join(tmp, "profile.tar"))
    for k, j in enumerate(jpegs):
        meta = json.dumps({"source": paths[k], "label": 1}).encode()
        w.write(f"{k:08d}", {"cls": b"1", "jpg": j, "json": meta})
    w.close()
    t["tar + index + json"] = time.perf_counter() - t0
    return t


def _bare_chain(paths: list[str], size: int, quality: int) -> float:
    """The codecs alone: simplejpeg decode, OpenCV INTER_LINEAR resize, centre crop, simplejpeg encode."""
    import cv2
    import simplejpeg

    t0 = time.perf_counter()
    for p in paths:
        a = simplejpeg.decode_jpeg(_read(p), "RGB")
        h, w = a.shape[:2]
        s = size / min(h, w)
        r = cv2.resize(a, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_LINEAR)
        y, x = (r.shape[0] - size) // 2, (r.shape[1] - size) // 2
        simplejpeg.encode_jpeg(np.ascontiguousarray(r[y : y + size, x : x + size]), quality)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fresh", action="store_true", help="stages a list at a time, fresh arrays")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    import cv2

    from imgprep.report import environment

    cv2.setNumThreads(1)  # one worker's view: a prepare worker runs OpenCV on one thread
    size, quality = 256, 95
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        paths = _images(a.images, src)
        runs, bare, whole = [], [], []
        for r in range(a.repeats):
            runs.append((_stages if a.fresh else _worker_stages)(paths, size, quality, tmp))
            bare.append(_bare_chain(paths, size, quality))
            out = os.path.join(tmp, f"out{r}")
            cmd = [sys.executable, "-m", "imgprep.cli.main", "prepare", src, out, "--workers", "1", "--no-progress"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            whole.append(time.perf_counter() - t0)
    n = a.images

    def ms(values):
        v = [x / n * 1e3 for x in values]
        return {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}

    stages = {k: ms([r[k] for r in runs]) for k in runs[0]}
    total = sum(s["median"] for s in stages.values())
    res = {
        "what": "milliseconds per image of one prepare worker, by stage (one process, one OpenCV thread)",
        "command": f"python benchmarks/profile_prepare.py --images {n} --repeats {a.repeats}"
        + (" --fresh" if a.fresh else ""),
        "stages_run": "a stage at a time over lists of fresh arrays" if a.fresh else "image by image, one Scratch",
        "machine": environment(),
        "images": n,
        "stages_ms": stages,
        "stages_total_ms": round(total, 3),
        "share": {k: round(s["median"] / total, 3) for k, s in stages.items()},
        "bare_chain_ms": ms(bare),
        "prepare_workers_1_whole_process_ms": ms(whole),
    }
    for k, s in stages.items():
        print(f"{k:30s} {s['median']:7.3f} ms  ({res['share'][k]:.0%})")
    print(f"{'sum of stages':30s} {total:7.3f} ms")
    print(f"{'bare codec chain':30s} {res['bare_chain_ms']['median']:7.3f} ms")
    print(f"{'prepare --workers 1 (whole)':30s} {res['prepare_workers_1_whole_process_ms']['median']:7.3f} ms")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
