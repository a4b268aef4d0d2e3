"""How much of the DALI CPU loader's time is its Python side: the same pipeline (full paper
augmentation) fed an epoch's batches read in advance, against the loader reading the shards,
shuffling and drawing as it goes, and against the loader parsing every shard's index again at each
epoch (as it did before `reader.IndexCache`), interleaved in one process; with the feeding thread's
own CPU time per image. Also in the same rounds: DALI's own reader with decoding alone (the bound
of `bench_load.py`) and the loader with its fused operator returning at once (its output left
unwritten) and with one that only stores a constant into its float32 output: how far from the
bound an operator that cost nothing would leave the loader (the most any work on the operator can
give), and how much of the operator's cost its output's stores alone take.

Usage: python benchmarks/bench_feed.py DATA [--rounds 3] [--batch-size 128] [--json-out F]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (the stub operators below are compiled by numba: module globals)
from numba import carray  # noqa: E402

from imgprep.fused_cpu import _ptr  # noqa: E402


def _epoch_feeds(lo) -> list[dict]:
    """One epoch's feeds, as the loader schedules them (the pipeline run and its outputs taken)."""
    feeds, schedule = [], lo._schedule

    def grab(pipe, feed):
        # copied: the loader reads each batch into one of a few buffers it reuses
        feeds.append({k: [a.copy() for a in v] if isinstance(v, list) else v.copy() for k, v in feed.items()})
        schedule(pipe, feed)

    lo._schedule = grab
    try:
        for _ in lo:
            pass
    finally:
        lo._schedule = schedule
    return feeds


def _run_feeds(lo, feeds: list[dict]) -> tuple[float, float]:
    """images/s and the calling thread's CPU us per image of running `feeds` through the pipeline,
    as many scheduled ahead as the loader keeps."""
    pipe, ahead = lo._pipeline(lo.handover), max(1, lo.cfg.prefetch)
    t, c, pending = time.perf_counter(), time.thread_time(), 0
    for feed in feeds:
        lo._schedule(pipe, feed)
        pending += 1
        if pending > ahead:
            lo._take(pipe, lo.handover)
            pending -= 1
    for _ in range(pending):
        lo._take(pipe, lo.handover)
    n = len(feeds) * lo.cfg.rank_batch
    return n / (time.perf_counter() - t), (time.thread_time() - c) / n * 1e6


def _run_loader(lo, indexes=None) -> tuple[float, float]:
    """One epoch of the loader (with `indexes` in place of its own IndexCache for it)."""
    kept = lo.indexes
    lo.indexes = kept if indexes is None else indexes
    try:
        t, c, n = time.perf_counter(), time.thread_time(), 0
        for _, y in lo:
            n += len(y)
        return n / (time.perf_counter() - t), (time.thread_time() - c) / n * 1e6
    finally:
        lo.indexes = kept


def _noop(out_ptr, out_shapes_ptr, out_ndims_ptr, num_outs, in_ptr, in_shapes_ptr, in_ndims_ptr, num_ins):
    """The operator's C entry doing nothing: its output left unwritten."""
    return


def _fill(out_ptr, out_shapes_ptr, out_ndims_ptr, num_outs, in_ptr, in_shapes_ptr, in_ndims_ptr, num_ins):
    """The operator's C entry writing 0.5 to every float of its output (3, c, c) and reading
    nothing else: the cost of the output's stores alone."""
    outs = carray(_ptr(out_ptr), 1, dtype=np.int64)
    shapes = carray(_ptr(out_shapes_ptr), 1, dtype=np.int64)
    so = carray(_ptr(shapes[0]), 3, dtype=np.int64)
    out = carray(_ptr(outs[0]), so[0] * so[1] * so[2], dtype=np.float32)
    for i in range(out.size):
        out[i] = 0.5


def _stub_operator_loader(data: str, batch: int, entry):
    """A loader like the benchmark's whose fused CPU operator is `entry` (a Python function of
    the operator's C signature, compiled here): the pipeline is built (in `warm_up`) while
    `fused_cpu.run_cfunc` is that callback."""
    from numba import cfunc

    from imgprep import dali_loader, fused_cpu
    from imgprep.loaders import make_loader

    real = fused_cpu.run_cfunc
    fused_cpu.run_cfunc = cfunc(fused_cpu._RUN_SIG, nopython=True)(entry)
    dali_loader.fused_operator.cache_clear()
    try:
        lo = make_loader(data, "train", batch, "train", backend="dali", device="cpu")
        lo.warm_up()
    finally:
        fused_cpu.run_cfunc = real
        dali_loader.fused_operator.cache_clear()
    return lo


class _Unkept:
    """An IndexCache that keeps nothing: every epoch parses each shard's index again."""

    def get(self, shard: str):
        from imgprep.reader import ShardIndex

        return ShardIndex.of_shard(shard)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    import torch  # noqa: F401  (imported before the loader, as a training process has it)
    from bench_load import _dali_native, _pipe_rate

    from imgprep.loaders import make_loader
    from imgprep.report import environment, summarize, write_json

    lo = make_loader(a.data, "train", a.batch_size, "train", backend="dali", device="cpu")
    lo.warm_up()
    stubs = {
        "loader, operator doing nothing": _stub_operator_loader(a.data, a.batch_size, _noop),
        "loader, operator only writing its output": _stub_operator_loader(a.data, a.batch_size, _fill),
    }
    decode = _dali_native(a.data, a.batch_size, lo.threads, stock=False)
    feeds = _epoch_feeds(lo)  # also the first epoch, out of the timing
    for stub in stubs.values():  # their first epochs, out of the timing too
        for _ in stub:
            pass
    runs = {
        "fed in advance": [],
        "loader": [],
        "loader, indexes parsed each epoch": [],
        **{k: [] for k in stubs},
        "dali decode": [],
    }
    for _ in range(a.rounds):
        runs["fed in advance"].append(_run_feeds(lo, feeds))
        runs["loader"].append(_run_loader(lo))
        runs["loader, indexes parsed each epoch"].append(_run_loader(lo, _Unkept()))
        for k, stub in stubs.items():
            runs[k].append(_run_loader(stub))
        runs["dali decode"].append((_pipe_rate(decode, a.batch_size, 5, len(feeds))[0], None))
    figures = {k: {"images_per_s": summarize([r for r, _ in v])} for k, v in runs.items()}
    for k, v in runs.items():
        if k != "dali decode":  # DALI's own reader: no feeding thread
            figures[k]["feeding_thread_us_per_image"] = summarize([u for _, u in v])
    share = 1 - statistics.median(r for r, _ in runs["loader"]) / statistics.median(
        r for r, _ in runs["fed in advance"]
    )
    kept = [u / p for (u, _), (p, _) in zip(runs["loader"], runs["loader, indexes parsed each epoch"], strict=True)]
    figures["loader / indexes parsed each epoch, per round"] = summarize(kept)
    for k in ("loader", *stubs):
        per = [u / d for (u, _), (d, _) in zip(runs[k], runs["dali decode"], strict=True)]
        figures[f"{k} / dali decode, per round"] = summarize(per)
    for k, f in figures.items():
        if "images_per_s" not in f:
            continue
        feeding = f.get("feeding_thread_us_per_image")
        tail = f", feeding thread {feeding['median']:.0f} us/image" if feeding else ""
        print(f"{k:42s} {f['images_per_s']['median']:7.0f} images/s{tail}")
    print(f"the Python side's share of the loader's time: {share:.1%}")
    print(f"indexes kept across epochs: {statistics.median(kept):.3f}x per round ({min(kept):.3f}-{max(kept):.3f})")
    for k in ("loader", *stubs):
        f = figures[f"{k} / dali decode, per round"]
        print(f"{k} / dali decode: {f['median']:.1%} per round ({f['min']:.1%}-{f['max']:.1%})")
    if a.json_out:
        write_json(
            a.json_out,
            {
                "what": "DALI CPU loader, full augmentation: fed an epoch read in advance vs reading as it goes, "
                "and the loader and the loader with a no-op operator against DALI decoding alone",
                "command": f"python benchmarks/bench_feed.py DATA --rounds {a.rounds}",
                "machine": environment(),
                "batch_size": a.batch_size,
                "batches": len(feeds),
                "figures": figures,
                "python_side_share": share,
            },
        )


if __name__ == "__main__":
    main()
