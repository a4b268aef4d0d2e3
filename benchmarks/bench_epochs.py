"""Training epochs of the DALI loader (CPU, full paper augmentation): the loader's start-up (made
and warmed up, as `imgprep train` does before its first epoch; torch imported before, timed
apart), then the time from the start of each epoch to its first batch and each epoch's images/s,
for this checkout and, with `--before DIR`, another checkout (e.g. `git worktree add /tmp/before
COMMIT`), run in separate processes, interleaved; medians with min-max.

Usage: python benchmarks/bench_epochs.py [--data DIR] [--images 1200] [--epochs 4] [--rounds 3]
       [--before DIR] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(data: str, epochs: int, batch: int) -> None:
    t = time.perf_counter()
    import torch  # noqa: F401  (a training process has it already: not the loader's start-up)

    torch_s = time.perf_counter() - t
    from imgprep.loaders import make_loader

    t = time.perf_counter()
    lo = make_loader(data, "train", batch, "train", backend="dali", device="cpu")
    if hasattr(lo, "warm_up"):  # what `imgprep train` does before its first epoch (a checkout from before it: not)
        lo.warm_up()
    out = [{"import_torch_s": torch_s, "start_s": time.perf_counter() - t}]
    for _ in range(epochs):
        t = time.perf_counter()
        it = iter(lo)
        n = len(next(it)[1])
        first = time.perf_counter() - t
        for _, y in it:
            n += len(y)
        out.append({"first_batch_s": first, "images_per_s": n / (time.perf_counter() - t)})
    print(json.dumps(out))


def _run(root: str, data: str, epochs: int, batch: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": root}
    cmd = [sys.executable, __file__, "--worker", "--data", data, "--epochs", str(epochs), "--batch-size", str(batch)]
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{root}: the benchmark's worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default=None, help="another checkout to compare with")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    if a.worker:
        return _worker(a.data, a.epochs, a.batch_size)
    sys.path.insert(0, HERE)
    from imgprep.report import environment, summarize, write_json

    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            from imgprep.prepare import PrepareConfig, prepare
            from imgprep.synth import SynthConfig, synthesize

            src = os.path.join(tmp, "src")
            synthesize(SynthConfig(src, classes=10, per_class=a.images // 10, val_per_class=1))
            data = os.path.join(tmp, "data")
            prepare(PrepareConfig(src, data), progress=False, log=lambda s: None)
        variants = {"this checkout": HERE, **({"before": os.path.abspath(a.before)} if a.before else {})}
        runs = {k: [] for k in variants}
        for _ in range(a.rounds):
            for k, root in variants.items():
                runs[k].append(_run(root, data, a.epochs, a.batch_size))
    figures = {}
    for k, rs in runs.items():
        starts, rs = [r[0] for r in rs], [r[1:] for r in rs]
        figures[k] = {
            "import_torch_s": summarize([s["import_torch_s"] for s in starts]),
            "loader_start_s": summarize([s["start_s"] for s in starts]),
            "first_epoch": {
                "first_batch_s": summarize([r[0]["first_batch_s"] for r in rs]),
                "images_per_s": summarize([r[0]["images_per_s"] for r in rs]),
            },
            "later_epochs": {
                "first_batch_s": summarize([e["first_batch_s"] for r in rs for e in r[1:]]),
                "images_per_s": summarize([e["images_per_s"] for r in rs for e in r[1:]]),
            },
        }
    res = {
        "what": "DALI training epochs on the CPU (full augmentation): start-up, time to the first batch, images/s",
        "command": "python benchmarks/bench_epochs.py" + (" --before DIR" if a.before else ""),
        "machine": environment(),
        "images": a.images,
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "rounds": a.rounds,
        "figures": figures,
    }
    print(json.dumps(figures, indent=1))
    if a.json_out:
        write_json(a.json_out, res)


if __name__ == "__main__":
    main()
