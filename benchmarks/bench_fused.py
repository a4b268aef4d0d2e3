"""The DALI CPU loader's fused operator on one core: the shipped kernel (`fused_cpu.fused_kernel`)
against its former form (the three channels of a row in one loop), per 224 view of a 256 mean
image, forward and mirrored rows, into a cached output and into a batch's cold 77 MB output;
interleaved rounds, medians with min-max. Both forms' outputs are checked equal first.

Usage: python benchmarks/bench_fused.py [--rounds 9] [--json-out F]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def former_kernel(out, img, mean, p):
    """The kernel before it had one loop per channel: a row's three channels in one loop into a
    (3, c) buffer in L1, then copied to `out` (the same numbers)."""
    top, left, mirror = int(p[0]), int(p[1]), p[2] > 0.5
    hh, ww = img.shape[0], img.shape[1]
    i0, i1, i2, o0, o1, o2 = p[3], p[4], p[5], p[6], p[7], p[8]
    has_mean = mean.shape[3] > 1
    flat = img.reshape(-1)
    row = np.empty((3, ww), np.float32)  # this row's (3, c), in L1
    t0, t1, t2 = row[0], row[1], row[2]
    last = ww - 1
    for h in range(hh):
        src = flat[h * ww * 3 : (h + 1) * ww * 3]
        if has_mean:
            y, z = top + h, left + ww
            m0, m1, m2 = mean[0, 0, y, left:z], mean[0, 1, y, left:z], mean[0, 2, y, left:z]
            if mirror:
                for w in range(ww):
                    k = np.uint64(last - w)
                    t0[k] = src[3 * w] * i0 + o0 - m0[w]
                    t1[k] = src[3 * w + 1] * i1 + o1 - m1[w]
                    t2[k] = src[3 * w + 2] * i2 + o2 - m2[w]
            else:
                for w in range(ww):
                    t0[w] = src[3 * w] * i0 + o0 - m0[w]
                    t1[w] = src[3 * w + 1] * i1 + o1 - m1[w]
                    t2[w] = src[3 * w + 2] * i2 + o2 - m2[w]
        elif mirror:
            for w in range(ww):
                k = np.uint64(last - w)
                t0[k] = src[3 * w] * i0 + o0
                t1[k] = src[3 * w + 1] * i1 + o1
                t2[k] = src[3 * w + 2] * i2 + o2
        else:
            for w in range(ww):
                t0[w] = src[3 * w] * i0 + o0
                t1[w] = src[3 * w + 1] * i1 + o1
                t2[w] = src[3 * w + 2] * i2 + o2
        d0, d1, d2 = out[0, h], out[1, h], out[2, h]
        for w in range(ww):
            d0[w] = t0[w]
            d1[w] = t1[w]
            d2[w] = t2[w]


def _times(f, img, mean, p, batch: np.ndarray, evict: np.ndarray, hot_calls: int) -> tuple[float, float]:
    """us per view into one cached (3, c, c) output, and (best of 3) into each view of a batch
    output after the caches were flushed by touching `evict`."""
    one = np.empty(batch.shape[1:], np.float32)
    t = time.perf_counter()
    for _ in range(hot_calls):
        f(one, img, mean, p)
    hot = (time.perf_counter() - t) / hot_calls * 1e6
    cold = []
    for _ in range(3):
        evict += 1
        t = time.perf_counter()
        for k in range(len(batch)):
            f(batch[k], img, mean, p)
        cold.append((time.perf_counter() - t) / len(batch) * 1e6)
    return hot, min(cold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    from numba import njit

    from imgprep import fused_cpu
    from imgprep.report import environment, summarize, write_json

    kernels = {"shipped": fused_cpu.fused_kernel, "former": njit(former_kernel)}
    rng = np.random.default_rng(0)
    c, s = 224, 256
    img = rng.integers(0, 256, (c, c, 3), dtype=np.uint8)
    mean = rng.normal(0, 1, (1, 3, s, s)).astype(np.float32)

    def params(mirror):
        return np.float32([13, 29, mirror, 1 / 58.4, 1 / 57.1, 1 / 57.4, -2.1, -2.0, -1.8])

    for mirror in (0, 1):  # both forms, the same numbers (also compiles them)
        outs = []
        for f in kernels.values():
            outs.append(np.full((3, c, c), np.nan, np.float32))
            f(outs[-1], img, mean, params(mirror))
        if not np.array_equal(outs[0], outs[1]):
            raise SystemExit(f"the two kernels differ (mirror={mirror})")

    batch = np.zeros((args.batch_size, 3, c, c), np.float32)  # faulted in once: cold caches, not fresh pages
    evict = np.ones(64 << 20, np.uint8)
    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, f in kernels.items():
            for mirror in (0, 1):
                hot, cold = _times(f, img, mean, params(mirror), batch, evict, 1000)
                rows = "mirrored" if mirror else "forward"
                samples.setdefault(f"{name} {rows} cached", []).append(hot)
                samples.setdefault(f"{name} {rows} cold", []).append(cold)
    results = {k: summarize(v) for k, v in samples.items()}
    for k, v in results.items():
        print(f"{k:28s} {v['median']:6.1f} us a view ({v['min']:.1f}-{v['max']:.1f})")
    if args.json_out:
        write_json(
            args.json_out,
            {
                "command": "python benchmarks/bench_fused.py " + " ".join(sys.argv[1:]),
                "machine": environment(),
                "view": [3, c, c],
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "us_per_view": results,
                "samples": samples,
            },
        )


if __name__ == "__main__":
    main()
