"""`prepare` of this checkout against another one (an older commit), interleaved: whole processes
of `imgprep.prepare.prepare` with `--workers N` over the same images, images/s with min-max, each
round's own ratio (new over old), minor page faults, and whether both wrote the same manifest
(shards, statistics and all).

The other checkout runs with PYTHONPATH pointing at it and this interpreter, so it needs no venv of
its own: a `git worktree add DIR COMMIT` is enough.

Usage: python benchmarks/ab_prepare.py OTHER [--src DIR | --images 1200] [--workers 1 2] [--rounds 8]
       [--json-out F]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = """
import resource, sys
from imgprep.prepare import PrepareConfig, prepare
prepare(PrepareConfig(sys.argv[1], sys.argv[2], workers=int(sys.argv[3])), progress=False, log=lambda s: None)
r = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(sum(x.ru_minflt for x in r))
"""


def _once(root: str, src: str, out: str, workers: int) -> tuple[float, int, str]:
    """Seconds of one whole process, its (and its workers') minor faults, the manifest's sha256."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": root}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _RUN, src, out, str(workers)], env=env, cwd=tempfile.gettempdir(),
                       capture_output=True, text=True)  # fmt: skip
    dt = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{root}: prepare failed:\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "manifest.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return dt, int(r.stdout.split()[-1]), digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", help="the other checkout (e.g. a git worktree of an older commit)")
    ap.add_argument("--src", default=None, help="a folder of class folders (default: --images photo-like JPEGs)")
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "benchmarks"))
    from imgprep.report import environment, summarize, write_json

    variants = {"this checkout": HERE, "other": os.path.abspath(a.other)}
    with tempfile.TemporaryDirectory() as tmp:
        src = a.src
        if src is None:
            from bench_prepare import make_images

            src = os.path.join(tmp, "src")
            make_images(src, a.images)
        n = sum(len(files) for _, _, files in os.walk(src))
        runs = {(k, w): [] for w in a.workers for k in variants}
        for _ in range(a.rounds):
            for w in a.workers:
                for k, root in variants.items():
                    runs[k, w].append(_once(root, src, os.path.join(tmp, "out"), w))
    figures = {}
    for w in a.workers:
        new, old = runs["this checkout", w], runs["other", w]
        figures[f"workers {w}"] = {
            **{
                k: {
                    "images_per_s": summarize([n / s for s, _, _ in runs[k, w]]),
                    "minor_faults": summarize([f for _, f, _ in runs[k, w]]),
                }
                for k in variants
            },  # fmt: skip
            "this over other, per round": summarize([o[0] / t[0] for t, o in zip(new, old, strict=True)]),
            "same manifest": len({d for _, _, d in new + old}) == 1,
        }
        f = figures[f"workers {w}"]
        this, other, ratio = f["this checkout"], f["other"], f["this over other, per round"]
        print(
            f"--workers {w}: this {this['images_per_s']['median']:.0f} images/s, other "
            f"{other['images_per_s']['median']:.0f}; per round {ratio['median']:.3f}x ({ratio['min']:.3f}-"
            f"{ratio['max']:.3f}); faults {this['minor_faults']['median']:.0f} vs "
            f"{other['minor_faults']['median']:.0f}; same manifest: {f['same manifest']}"
        )
    if a.json_out:
        write_json(
            a.json_out,
            {
                "what": "prepare of this checkout vs another, whole processes, interleaved",
                "command": f"python benchmarks/ab_prepare.py OTHER --workers {' '.join(map(str, a.workers))} "
                f"--rounds {a.rounds}" + (" --src DIR" if a.src else f" --images {a.images}"),
                "machine": environment(),
                "images": n,
                "figures": figures,
            },
        )


if __name__ == "__main__":
    main()
