"""How long an evaluation epoch of the DALI loader takes to give its first batch, with the pipeline of
the previous epoch reused (as shipped) and rebuilt at every epoch (as before). A training run
validates every epoch, so this is paid once per epoch.

Epochs 2..N of one loader are timed (epoch 1 builds the pipeline either way), the two variants
interleaved; medians with min-max.

Usage: python benchmarks/bench_epoch_start.py [--data DIR] [--images 1000] [--epochs 6] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def _first_batch_seconds(loader, rebuild: bool) -> float:
    if rebuild:
        loader._pipe = loader._pipe_key = None  # what every epoch did before the pipeline was reused
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    dt = time.perf_counter() - t
    for _ in it:
        pass
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    from imgprep.loaders import make_loader
    from imgprep.report import environment

    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            from imgprep.prepare import PrepareConfig, prepare
            from imgprep.synth import SynthConfig, synthesize

            src = os.path.join(tmp, "src")
            per_class = max(1, a.images // 10)
            synthesize(SynthConfig(src, classes=10, per_class=per_class // 5, val_per_class=per_class))
            data = os.path.join(tmp, "data")
            prepare(PrepareConfig(src, data), progress=False, log=lambda s: None)
        times = {"reused": [], "rebuilt": []}
        loaders = {k: make_loader(data, "val", a.batch_size, "eval", backend="dali") for k in times}
        for lo in loaders.values():
            _first_batch_seconds(lo, False)  # epoch 1: built either way
        for _ in range(a.epochs - 1):
            for k, lo in loaders.items():
                times[k].append(_first_batch_seconds(lo, k == "rebuilt"))
    res = {
        "what": "seconds from the start of an evaluation epoch to its first batch (DALI, CPU)",
        "command": "python benchmarks/bench_epoch_start.py",
        "machine": environment(),
        "batch_size": a.batch_size,
        "figures": {
            k: {"median": round(statistics.median(v), 4), "min": round(min(v), 4), "max": round(max(v), 4)}
            for k, v in times.items()
        },
    }
    print(json.dumps(res["figures"]))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
