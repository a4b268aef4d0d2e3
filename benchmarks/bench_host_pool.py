"""The DALI CPU loader with DALI's default host allocator (DALI_MALLOC_POOL_THRESHOLD=32M: buffers
under 32 MB from malloc) against the loader's own setting (2M: every batch-sized buffer from DALI's
pool), each in processes of its own (DALI reads the setting once), interleaved: steady-state
images/s, page faults and system time per image, epochs 2 on.

Usage: python benchmarks/bench_host_pool.py DATA [--rounds 8] [--epochs 6] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARMS = {"DALI's default (32M)": "32M", "the loader's (2M)": None}


def _child(data: str, epochs: int, batch: int) -> None:
    """One process: the loader's epochs, one JSON line each (images/s, faults and system us an image)."""
    from imgprep.loaders import make_loader

    lo = make_loader(data, "train", batch, backend="dali", device="cpu")
    for _ in range(epochs):
        r0, t, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
        for _, y in lo:
            n += len(y)
        r1, dt = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t
        row = {
            "rate": n / dt,
            "faults": (r1.ru_minflt - r0.ru_minflt) / n,
            "sys_us": (r1.ru_stime - r0.ru_stime) / n * 1e6,
        }
        print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(a.data, a.epochs, a.batch_size)
    from imgprep.report import environment, summarize, write_json

    runs: dict[str, list[dict]] = {k: [] for k in ARMS}
    for r in range(a.rounds):
        for name in list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]:  # each arm first in every other round
            env = {k: v for k, v in os.environ.items() if k != "DALI_MALLOC_POOL_THRESHOLD"}
            if ARMS[name] is not None:
                env["DALI_MALLOC_POOL_THRESHOLD"] = ARMS[name]
            cmd = [
                sys.executable,
                __file__,
                a.data,
                "--child",
                "--epochs",
                str(a.epochs),
                "--batch-size",
                str(a.batch_size),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")][2:]  # steady state
            runs[name].append({k: statistics.median(row[k] for row in rows) for k in ("rate", "faults", "sys_us")})
            print(r, name, {k: round(v, 1) for k, v in runs[name][-1].items()}, flush=True)
    (base, base_runs), (mine, mine_runs) = runs.items()
    paired = [m["rate"] / b["rate"] for b, m in zip(base_runs, mine_runs, strict=True)]
    result = {
        "command": "python benchmarks/bench_host_pool.py DATA " + " ".join(sys.argv[2:]),
        "machine": environment(),
        "batch_size": a.batch_size,
        "epochs_per_process": a.epochs,
        "arms": {n: {k: summarize([x[k] for x in rs]) for k in ("rate", "faults", "sys_us")} for n, rs in runs.items()},
        "paired_rate_ratio": summarize(paired),
        "runs": runs,
    }
    for n, v in result["arms"].items():
        rate, faults, sys_us = (v[k]["median"] for k in ("rate", "faults", "sys_us"))
        print(f"{n:22s} {rate:7.0f} img/s  {faults:5.1f} faults/img  {sys_us:5.1f} us sys/img")
    print(f"{mine} / {base}: {result['paired_rate_ratio']['median']:.3f} (paired median)")
    if a.json_out:
        write_json(a.json_out, result)


if __name__ == "__main__":
    main()
