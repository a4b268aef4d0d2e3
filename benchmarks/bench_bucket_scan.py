"""Listing and scanning SRC in a bucket at ImageNet's size (SeaweedFS `weed mini` on 127.0.0.1,
started here): `prepare`'s discovery + plan, timed in a fresh process with its peak memory.

- folders: `--classes` x `--per-class` objects `train/<wnid>/<wnid>_<i>.JPEG` (1 byte each: the
  listing is what is measured), listed (1000 keys a LIST page), walked and planned.
- ilsvrc: one `ILSVRC2012_img_train.tar` of `--classes` per-class tars of `--per-class` members,
  scanned by range reads (`bucket_src.SCAN_CHUNK`): members of 1 byte at full size (1.28M headers,
  1.3 GB: the cost of the headers themselves), and members of ImageNet's sizes (log-normal, mean
  ~110 KB) over `--sized-classes` classes (the bytes a real scan reads on through), extrapolated
  to all classes and marked as such (a full-size tar of them is 138 GB).

Usage: python benchmarks/bench_bucket_scan.py [--classes 1000] [--per-class 1282] [--sized-classes 10]
           [--layouts folders,ilsvrc] [--json-out docs/bucket_scan.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tests"))  # the test suite's S3 server

IMAGENET_TRAIN = 1_281_167

# run in a fresh interpreter: discovery + plan of one URL, its time and peak memory as JSON
MEASURE = """
import json, sys, time
from imgprep import bucket_src
from imgprep.bucket_src import discover_bucket
from imgprep.prepare import plan_units
bucket_src.SCAN_CHUNK = int(sys.argv[2]) or bucket_src.SCAN_CHUNK
t = time.perf_counter()
index = discover_bucket(sys.argv[1], "train", "auto", None)
t_list = time.perf_counter() - t
units = plan_units(index, 1000, 0)
# VmHWM, not ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss across exec
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - t, "discover_s": t_list, "images": len(index.splits["train"]),
                  "units": len(units), "peak_rss_mb": hwm / 1024}))
"""


def wnid(c: int) -> str:
    return f"n{c:08d}"


def _put_class(args) -> int:
    url, c, per_class = args
    from imgprep.remote import Store

    st = Store(url)
    w = wnid(c)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: st.put(f"train/{w}/{w}_{i}.JPEG", b"x"), range(per_class)))
    return per_class


def populate_folders(url: str, classes: int, per_class: int) -> float:
    """Objects per second of the upload (8 processes x 16 requests in flight)."""
    t = time.perf_counter()
    with ProcessPoolExecutor(8) as pool:
        n = sum(pool.map(_put_class, [(url, c, per_class) for c in range(classes)]))
    return n / (time.perf_counter() - t)


def build_train_tar(path: str, classes: int, per_class: int, sized: bool = False) -> None:
    """Members of 1 byte, or (sized) of ImageNet's sizes: log-normal, median 90 KB, mean ~108 KB."""
    import numpy as np

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as outer:
        for c in range(classes):
            buf = io.BytesIO()
            sizes = np.clip(rng.lognormal(np.log(90e3), 0.6, per_class), 500, 15e6).astype(int) if sized else None
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as inner:
                for i in range(per_class):
                    ti = tarfile.TarInfo(f"{wnid(c)}_{i}.JPEG")
                    ti.size = int(sizes[i]) if sized else 1
                    inner.addfile(ti, io.BytesIO(bytes(ti.size)))
            ti = tarfile.TarInfo(f"{wnid(c)}.tar")
            ti.size = buf.tell()
            buf.seek(0)
            outer.addfile(ti, buf)


def measure(url: str, chunk: int = 0) -> dict:
    r = subprocess.run([sys.executable, "-c", MEASURE, url, str(chunk)], capture_output=True, text=True, env=os.environ)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=1282)
    ap.add_argument("--sized-classes", type=int, default=10)
    ap.add_argument("--layouts", default="folders,ilsvrc")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    from servers import seaweedfs_session

    from imgprep.remote import Store
    from imgprep.report import environment, write_json

    out = {"classes": a.classes, "per_class": a.per_class, "images": a.classes * a.per_class}
    with seaweedfs_session("imgprep-bench-bucket-scan-") as (tmp, sw):
        if "folders" in a.layouts:
            rate = populate_folders("s3://bench/folders", a.classes, a.per_class)
            print(f"uploaded {a.classes * a.per_class:,} objects at {rate:,.0f}/s", flush=True)
            res = measure("s3://bench/folders")
            out["folders"] = {**res, "upload_objects_per_s": rate}
            print("folders:", res, flush=True)
        if "ilsvrc" in a.layouts:
            tar = os.path.join(tmp, "ILSVRC2012_img_train.tar")
            build_train_tar(tar, a.classes, a.per_class)
            Store("s3://bench/ilsvrc").put_file_checked("ILSVRC2012_img_train.tar", tar)
            res = measure("s3://bench/ilsvrc")
            out["ilsvrc_1_byte_members"] = {**res, "tar_bytes": os.path.getsize(tar)}
            print("ilsvrc, 1-byte members:", res, flush=True)
            build_train_tar(tar, a.sized_classes, a.per_class, sized=True)
            Store("s3://bench/ilsvrc-sized").put_file_checked("ILSVRC2012_img_train.tar", tar)
            res = measure("s3://bench/ilsvrc-sized")
            res["tar_bytes"] = os.path.getsize(tar)
            res["scan_mb_per_s"] = res["tar_bytes"] / res["discover_s"] / 1e6
            res["extrapolated_s_all_classes"] = res["seconds"] * a.classes / a.sized_classes
            out["ilsvrc_imagenet_sized_members"] = {**res, "classes_measured": a.sized_classes}
            print("ilsvrc, ImageNet-sized members:", res, flush=True)
            os.remove(tar)
    out["environment"] = environment()
    if a.json_out:
        write_json(a.json_out, out)


if __name__ == "__main__":
    main()
