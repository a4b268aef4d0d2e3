"""Where DALI on the CPU stops scaling: images/s per thread count, for DALI's reader alone
(pipe.run()), reader + window decode, and imgprep's whole train loader (fed by its Python
reader, fused operator), iterated as a training loop does.

Usage: python benchmarks/dali_threads.py [--data DIR] [--threads 2,4,8,16] [--images 6000]
It synthesizes and prepares its own data unless --data is given, and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rate(pipe, batch: int, seconds: float = 2.0) -> float:
    """Images/s of a raw DALI pipeline over `seconds`, after 3 warm-up batches."""
    from imgprep.timing import Throughput

    timer = Throughput(warmup=3)
    while timer.steps < 3 or timer.seconds < seconds:
        pipe.run()
        timer.step(batch)
    return timer.images_per_second


def _native(kind: str, paths: list[str], b: int, threads: int, crop: int):
    """DALI's own webdataset reader over the shards: alone ("reader") or with the window decode."""
    from nvidia.dali import fn, pipeline_def, types

    from imgprep.shards import index_path

    @pipeline_def(batch_size=b, num_threads=threads, device_id=None, seed=1, exec_dynamic=True)
    def p():
        jpg, cls = fn.readers.webdataset(
            paths=paths, index_paths=[index_path(s) for s in paths], ext=["jpg", "cls"],
            random_shuffle=True, initial_fill=4096,
        )  # fmt: skip
        cls = fn.pad(cls, axes=[0], shape=[7])
        if kind == "reader":
            return jpg.shape(), cls
        return fn.decoders.image_crop(jpg, crop=(crop, crop), output_type=types.RGB), cls

    pipe = p()
    pipe.build()
    return pipe


def _loader_rate(lo, seconds: float = 2.0) -> float:
    """Images/s of a loader's batches over `seconds` (epochs run on as needed), after 3 warm-up batches."""
    from imgprep.timing import Throughput

    timer, epoch = Throughput(warmup=3), 0
    lo.warm_up()
    while timer.steps < 3 or timer.seconds < seconds:
        lo.set_epoch(epoch)
        for _, y in lo:
            timer.step(len(y))
            if timer.steps >= 3 and timer.seconds >= seconds:
                break
        epoch += 1
    return timer.images_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", default="2,4,8,16")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    from imgprep._mp import cpu_count
    from imgprep.loaders import make_loader
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize

    data = a.data
    if data is None:
        work = tempfile.mkdtemp(prefix="dali-threads-")
        synthesize(
            SynthConfig(os.path.join(work, "src"), classes=10, per_class=a.images // 10, val_per_class=0),
            workers=cpu_count(),
        )
        data = os.path.join(work, "data")
        prepare(PrepareConfig(os.path.join(work, "src"), data, shard_size=250), progress=False, log=lambda s: None)
    b = a.batch_size
    report = {"cpu_cores": cpu_count(), "batch_size": b}
    for threads in [int(t) for t in a.threads.split(",")]:
        lo = make_loader(data, "train", b, device="cpu", workers=threads)
        for kind in ("reader", "decode", "full"):
            if kind == "full":
                rate = _loader_rate(lo)
            else:
                pipe = _native(kind, lo.info.shards, b, threads, lo.cfg.crop)
                rate = _rate(pipe, b)
                del pipe
            report[f"{kind}_threads{threads}"] = round(rate)
            print(f"{kind} threads {threads}: {round(rate)} img/s", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
