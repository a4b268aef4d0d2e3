"""Images/s of `imgprep prepare` against the bare codec chain, a naive Pillow script and decode alone.

Every variant runs as its own process on the same photo-like JPEGs (1/f spectra, shorter side
300-500, aspect 0.75-1.33, q90: the images of profile_prepare.py), whole process included
(interpreter start, imports, writing the output), the variants interleaved `--repeats` times:

  bare chain        simplejpeg decode, OpenCV INTER_LINEAR resize, centre crop, simplejpeg encode
                    q95, in one process: the codecs alone (no statistics, checksums or tar)
  bare chain x2     the same as two processes at once, each over half the images: how far this
                    machine's cores scale for independent work (the bound of imgprep w=2 / w=1)
  naive (bicubic)   open, convert("RGB"), resize shorter side to 256 with Pillow's default
                    filter, centre crop, save JPEG q95; one process, one file per image
  naive (bilinear)  the same with Image.BILINEAR (torchvision's Resize filter)
  decode only       Pillow open + convert("RGB") of every file, nothing else
  imgprep w=1,2     `imgprep prepare --workers N` with the default shard size (1000; fewer shards
                    than the workers can share are cut into pieces), shards, index, stats, manifest
  img2dataset       the peers a user would pick instead, one process each, run by `--peers-python`
  litdata optimize  (an environment that has them: they pin other versions of torch and OpenCV
                    than imgprep, so they live in their own venv); skipped, with a note, without it:
                    img2dataset over file:// URLs (center_crop to 256, webdataset, q95), litdata's
                    `optimize` with a Pillow bilinear resize + crop + q95 encode per image

Usage: python benchmarks/bench_prepare.py [--images 1200] [--repeats 5] [--json-out FILE]
           [--peers-python /path/to/venv/bin/python]   # e.g. a venv with: pip install img2dataset litdata
"""

from __future__ import annotations

import argparse
import json
import os
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

BARE = r"""
import sys, os, glob
import cv2, numpy as np, simplejpeg
cv2.setNumThreads(1)
src, dst = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(os.path.join(src, "*", "*", "*.jpg")))
lo, hi = (int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else f"0:{len(files)}").split(":"))
os.makedirs(dst, exist_ok=True)
for i, f in enumerate(files[lo:hi], start=lo):
    with open(f, "rb") as fh:
        a = simplejpeg.decode_jpeg(fh.read(), "RGB")
    h, w = a.shape[:2]
    s = 256 / min(h, w)
    r = cv2.resize(a, (max(256, round(w * s)), max(256, round(h * s))), interpolation=cv2.INTER_LINEAR)
    y, x = (r.shape[0] - 256) // 2, (r.shape[1] - 256) // 2
    with open(os.path.join(dst, f"{i}.jpg"), "wb") as fh:
        fh.write(simplejpeg.encode_jpeg(np.ascontiguousarray(r[y : y + 256, x : x + 256]), 95))
"""

# the bare chain as two processes at once, each over half the images: the machine's own scaling
PAIR = r"""
import subprocess, sys
n, cmd = int(sys.argv[1]), sys.argv[2:]
ps = [subprocess.Popen(cmd + [f"{n * i // 2}:{n * (i + 1) // 2}"]) for i in range(2)]
sys.exit(max(p.wait() for p in ps))
"""

LITDATA = r"""
import glob, io, os, sys
from PIL import Image
import litdata as ld

def fn(path):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
    l, t = (im.size[0] - 256) // 2, (im.size[1] - 256) // 2
    b = io.BytesIO()
    im.crop((l, t, l + 256, t + 256)).save(b, "JPEG", quality=95)
    return {"jpg": b.getvalue(), "cls": 0}

if __name__ == "__main__":
    files = sorted(glob.glob(os.path.join(sys.argv[1], "*", "*", "*.jpg")))
    ld.optimize(fn=fn, inputs=files, output_dir=sys.argv[2], chunk_bytes="64MB", num_workers=1)
"""


def _peers(py: str | None, src: str, out: str, work: str) -> dict:
    """The peers' variants runnable by the interpreter `py` (each needs its package there)."""
    import subprocess

    if not py:
        print("note: no --peers-python: img2dataset and litdata optimize are not run")
        return {}
    have = lambda mod: subprocess.run([py, "-c", f"import {mod}"], capture_output=True).returncode == 0  # noqa: E731
    found = {}
    if have("img2dataset"):
        urls = os.path.join(work, "urls.txt")
        import glob

        with open(urls, "w") as f:
            f.writelines(f"file://{p}\n" for p in sorted(glob.glob(os.path.join(src, "*", "*", "*.jpg"))))
        found["img2dataset"] = (
            [os.path.join(os.path.dirname(py), "img2dataset"), "--url_list", urls, "--input_format", "txt",
             "--output_folder", out,
             "--output_format", "webdataset", "--image_size", "256", "--resize_mode", "center_crop",
             "--encode_quality", "95", "--processes_count", "1", "--thread_count", "4",
             "--enable_wandb", "False"],
            out,
        )  # fmt: skip
    else:
        print(f"note: {py} has no img2dataset (pip install img2dataset); skipped")
    if have("litdata"):
        script = os.path.join(work, "litdata_optimize.py")  # optimize's workers import the script's fn
        with open(script, "w") as f:
            f.write(LITDATA)
        found["litdata optimize"] = ([py, script, src, out], out)
    else:
        print(f"note: {py} has no litdata (pip install litdata); skipped")
    return found


DECODE = r"""
import sys, os, glob
from PIL import Image
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "*", "*.jpg"))):
    Image.open(f).convert("RGB")
"""


def make_images(root: str, n: int) -> None:
    """n photo-like JPEGs (q90) in root/train/<class>/: those of profile_prepare.py."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from profile_prepare import _images

    _images(n, root)


def main() -> None:
    from imgprep.bench import time_command

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workdir", default=None, help="keep the images here between runs")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--plot", default=None, help="a PNG chart of the figures")
    ap.add_argument("--peers-python", default=None, help="an interpreter with img2dataset and litdata installed")
    ap.add_argument("--only", default=None, help="comma-separated variants to run (the bare chain, w=1 and w=2 always)")
    a = ap.parse_args()
    # as an installed copy runs: its bytecode compiled once (with this set, as on our CI machines, an
    # editable checkout compiles imgprep's modules again in every process, ~0.1 s of each start)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    work = a.workdir or tempfile.mkdtemp(prefix="imgprep-bench-")
    src = os.path.join(work, f"src-{a.images}")
    if not os.path.isdir(src):
        make_images(src, a.images)
    out = os.path.join(work, "out")
    py = sys.executable
    imgprep = [py, "-m", "imgprep.cli.main", "prepare", src, out, "--no-progress", "--shard-size", str(a.shard_size)]
    variants = {
        "bare chain": ([py, "-c", BARE, src, out], out),
        "bare chain x2": ([py, "-c", PAIR, str(a.images), py, "-c", BARE, src, out], out),
        "naive (bicubic)": ([py, "-c", NAIVE, src, out, "default"], out),
        "naive (bilinear)": ([py, "-c", NAIVE, src, out, "bilinear"], out),
        "decode only": ([py, "-c", DECODE, src], None),
        "imgprep w=1": (imgprep + ["--workers", "1"], out),
        "imgprep w=2": (imgprep + ["--workers", "2"], out),
        **_peers(a.peers_python, src, out, work),
    }
    if a.only:
        keep = {"bare chain", "imgprep w=1", "imgprep w=2", *(v.strip() for v in a.only.split(","))}
        variants = {k: v for k, v in variants.items() if k in keep}
    times = {name: [] for name in variants}
    for _ in range(a.repeats):  # interleaved: a slow spell of the machine touches every variant alike
        for name, (cmd, clean) in variants.items():
            times[name].append(time_command(cmd, clean))
    results = {}
    for name, ts in times.items():
        rates = [a.images / t for t in ts]
        results[name] = {
            "median_images_per_second": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "runs": [round(r, 1) for r in rates],
        }
    base_name = "naive (bicubic)" if "naive (bicubic)" in results else "bare chain"
    base = results[base_name]["median_images_per_second"]
    bare = results["bare chain"]["median_images_per_second"]
    print(f"{a.images} images (shorter side 300-500), {a.repeats} interleaved runs each, {os.cpu_count()} cores")
    print(f"{'variant':18s} {'img/s':>8s} {'min':>8s} {'max':>8s} {'vs ' + base_name.split()[0]:>9s}")
    for name, r in results.items():
        m = r["median_images_per_second"]
        print(f"{name:18s} {m:8.0f} {r['min']:8.0f} {r['max']:8.0f} {m / base:8.2f}x")
    w1, w2 = results["imgprep w=1"]["median_images_per_second"], results["imgprep w=2"]["median_images_per_second"]
    pair = results.get("bare chain x2", {}).get("median_images_per_second", float("nan"))
    # the same round's runs paired: a slow spell of the machine moves both of a pair
    paired = statistics.median(b / a for a, b in zip(times["imgprep w=2"], times["imgprep w=1"], strict=True))
    print(f"scaling 1 -> 2 workers: {w2 / w1:.2f}x (per round: {paired:.2f}x; the bare chain in 2 processes: "
          f"{pair / bare:.2f}x); imgprep w=1 at {w1 / bare:.0%} of the bare chain")  # fmt: skip
    if a.json_out:
        from imgprep.report import environment

        cmd = f"python benchmarks/bench_prepare.py --images {a.images} --repeats {a.repeats}"
        cmd += f" --only {a.only!r}" if a.only else ""
        with open(a.json_out, "w") as f:
            json.dump(
                {
                    "command": cmd,
                    "machine": environment(),
                    "images": a.images,
                    "shard_size": a.shard_size,
                    "repeats": a.repeats,
                    "results": results,
                    "ratios": {
                        "w1 / bare chain": w1 / bare,
                        "w2 / w1": w2 / w1,
                        "w2 / w1, median of the rounds' own": paired,
                        "bare chain x2 / bare chain": pair / bare,
                    },
                },
                f,
                indent=2,
            )
    if a.plot:
        from imgprep.report import environment, variants_chart

        variants_chart(a.plot, results, "bare chain", f"prepare, {a.images} images, whole process", environment())
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
