"""How much of the DALI CPU loader's time is its Python side: the same pipeline (full paper
augmentation) fed an epoch's batches read in advance, against the loader reading the shards,
shuffling and drawing as it goes, and against the loader parsing every shard's index again at each
epoch (as it did before `reader.IndexCache`), interleaved in one process; with the feeding thread's
own CPU time per image.

Usage: python benchmarks/bench_feed.py DATA [--rounds 3] [--batch-size 128] [--json-out F]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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

    from imgprep.loaders import make_loader
    from imgprep.report import environment, summarize, write_json

    lo = make_loader(a.data, "train", a.batch_size, "train", backend="dali", device="cpu")
    lo.warm_up()
    feeds = _epoch_feeds(lo)  # also the first epoch, out of the timing
    runs = {"fed in advance": [], "loader": [], "loader, indexes parsed each epoch": []}
    for _ in range(a.rounds):
        runs["fed in advance"].append(_run_feeds(lo, feeds))
        runs["loader"].append(_run_loader(lo))
        runs["loader, indexes parsed each epoch"].append(_run_loader(lo, _Unkept()))
    figures = {
        k: {"images_per_s": summarize([r for r, _ in v]), "feeding_thread_us_per_image": summarize([u for _, u in v])}
        for k, v in runs.items()
    }
    share = 1 - statistics.median(r for r, _ in runs["loader"]) / statistics.median(
        r for r, _ in runs["fed in advance"]
    )
    kept = [u / p for (u, _), (p, _) in zip(runs["loader"], runs["loader, indexes parsed each epoch"], strict=True)]
    figures["loader / indexes parsed each epoch, per round"] = summarize(kept)
    for k, f in figures.items():
        if "images_per_s" not in f:
            continue
        print(f"{k:34s} {f['images_per_s']['median']:7.0f} images/s, feeding thread "
              f"{f['feeding_thread_us_per_image']['median']:.0f} us/image")  # fmt: skip
    print(f"the Python side's share of the loader's time: {share:.1%}")
    print(f"indexes kept across epochs: {statistics.median(kept):.3f}x per round ({min(kept):.3f}-{max(kept):.3f})")
    if a.json_out:
        write_json(
            a.json_out,
            {
                "what": "DALI CPU loader, full augmentation: fed an epoch read in advance vs reading as it goes",
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
