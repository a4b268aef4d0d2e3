"""What checking shards against the manifest costs the first epoch (a process checks each shard once).

For each backend, one epoch in train mode is timed two ways, each in a fresh loader (so the check
runs), interleaved after a warm-up epoch: as shipped (every shard checked before its samples are
read), and with the check replaced by a no-op. The difference, over the unchecked epoch's time, is
the cost; later epochs of the same
process reuse the result (a stat per shard).

Usage: python benchmarks/bench_integrity.py [--data DIR] [--images 6000] [--batch-size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def _epoch_seconds(make, check: bool) -> float:
    from imgprep.integrity import ShardChecker

    real = ShardChecker.bad_samples
    if not check:
        ShardChecker.bad_samples = lambda self, path: {}
    try:
        loader = make()
        t = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - t
    finally:
        ShardChecker.bad_samples = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    from imgprep._mp import cpu_count
    from imgprep.loaders import make_loader
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize

    data = a.data
    if data is None:
        work = tempfile.mkdtemp(prefix="imgprep-integrity-")
        src = os.path.join(work, "src")
        synthesize(SynthConfig(src, classes=10, per_class=a.images // 10, val_per_class=0), workers=cpu_count())
        data = os.path.join(work, "data")
        prepare(PrepareConfig(src, data, shard_size=1000), progress=False, log=lambda s: None)
    report = {"data": data, "batch_size": a.batch_size, "cores": cpu_count(), "results": {}}
    for backend in ("dali", "torch"):

        def make(backend=backend):
            return make_loader(data, "train", a.batch_size, backend=backend, device="cpu")

        _epoch_seconds(make, False)  # warm-up: page cache, the fused operator's compilation
        rows = {False: [], True: []}
        for _ in range(a.repeats):  # interleaved, so that drifts in the machine's speed hit both alike
            for check in (False, True):
                rows[check].append(_epoch_seconds(make, check))
        off, on = statistics.median(rows[False]), statistics.median(rows[True])
        report["results"][backend] = {
            "epoch_seconds_unchecked": rows[False],
            "epoch_seconds_checked": rows[True],
            "first_epoch_cost_percent": round(100 * (on / off - 1), 1),
        }
        print(
            f"{backend}: first epoch {off:.2f} s unchecked, {on:.2f} s checked: "
            f"{100 * (on / off - 1):+.1f}% (median of {a.repeats})",
            flush=True,
        )
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
