"""`prepare` at ImageNet's counts: an ILSVRC2012-shaped train tar of tiny JPEGs.

1. Writes `ILSVRC2012_img_train.tar` with the real shape: 1000 per-class tars, 1,281,167 entries
   (833 classes of 1281 images, 167 of 1282), each entry the same tiny JPEG.
2. Times the scan of its headers and the planning of the shards (discover + plan_units) in a fresh
   process, with that process's peak RSS. Goal on the 2-core VM: under 60 s and 2 GB.
3. Prepares a 100k-image archive of the same shape (100 classes of 1000) with `imgprep prepare`
   and samples the resident memory of the whole process tree (driver and workers) every 0.5 s:
   images/s, the peak, and the RSS at each quarter of the run (it must stay flat).

Usage: python benchmarks/bench_scale.py [--work DIR] [--images 100000] [--workers 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

IMAGENET_TRAIN = 1_281_167
SCAN = r"""
import json, resource, sys, time
t = time.perf_counter()
from imgprep.sources import discover
from imgprep.prepare import plan_units
index = discover(sys.argv[1])
t_scan = time.perf_counter() - t
units = plan_units(index, 1000, 0)
print(json.dumps({"items": len(index.splits["train"]), "units": len(units), "scan_seconds": round(t_scan, 2),
                  "scan_and_plan_seconds": round(time.perf_counter() - t, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def tiny_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(b, "JPEG", quality=80)
    return b.getvalue()


def _member(name: str, data: bytes) -> bytes:
    from imgprep.shards import tar_header

    return tar_header(name, len(data)) + data + bytes(-len(data) % 512)


def write_train_tar(path: str, per_class: list[int]) -> None:
    """An ILSVRC2012-shaped tar of per-class tars, written directly (tar headers built by imgprep)."""
    jpeg = tiny_jpeg()
    with open(path, "wb") as f:
        for c, n in enumerate(per_class):
            wnid = f"n{c:08d}"
            inner = b"".join(_member(f"{wnid}_{i}.JPEG", jpeg) for i in range(n)) + bytes(1024)
            f.write(_member(f"{wnid}.tar", inner))
        f.write(bytes(1024))


def tree_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (Linux /proc), in MB."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def prepare_with_memory(src: str, out: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "imgprep.cli.main", "prepare", src, out, "--workers", str(workers), "--no-progress"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    samples = []
    while p.poll() is None:
        samples.append((time.perf_counter() - t, tree_rss_mb(p.pid)))
        time.sleep(0.5)
    seconds = time.perf_counter() - t
    out_text, err = p.communicate()
    if p.returncode:
        raise SystemExit(f"prepare failed: {err.strip().splitlines()[-1:]}")
    quarters = [
        max((m for s, m in samples if q * seconds / 4 <= s < (q + 1) * seconds / 4), default=0) for q in range(4)
    ]
    return {
        "seconds": round(seconds, 1),
        "summary": out_text.strip(),
        "peak_tree_rss_mb": round(max(m for _, m in samples), 1),
        "peak_tree_rss_mb_by_quarter": [round(q, 1) for q in quarters],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="imgprep-scale-")
    report = {}
    full = os.path.join(work, "full")
    os.makedirs(full, exist_ok=True)
    t = time.perf_counter()
    write_train_tar(os.path.join(full, "ILSVRC2012_img_train.tar"), [1281] * 833 + [1282] * 167)
    report["write_full_tar_seconds"] = round(time.perf_counter() - t, 1)
    r = subprocess.run([sys.executable, "-c", SCAN, full], capture_output=True, text=True, check=True)
    report["scan_and_plan_full"] = json.loads(r.stdout)
    assert report["scan_and_plan_full"]["items"] == IMAGENET_TRAIN
    print(f"scan + plan of {IMAGENET_TRAIN:,} entries: {report['scan_and_plan_full']}", flush=True)
    os.remove(os.path.join(full, "ILSVRC2012_img_train.tar"))
    part = os.path.join(work, "part")
    os.makedirs(part, exist_ok=True)
    write_train_tar(os.path.join(part, "ILSVRC2012_img_train.tar"), [a.images // 100] * 100)
    report["prepare_part"] = prepare_with_memory(part, os.path.join(work, "out"), a.workers)
    report["prepare_part"]["images"] = a.images
    report["prepare_part"]["images_per_second"] = round(a.images / report["prepare_part"]["seconds"], 1)
    print(f"prepare of {a.images:,} entries: {report['prepare_part']}", flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
