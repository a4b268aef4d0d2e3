"""The DALI CPU loader with DALI's default host allocator (DALI_MALLOC_POOL_THRESHOLD=32M: buffers
under 32 MB from malloc) against the loader's own setting (2M: every batch-sized buffer from DALI's
pool), each in processes of its own (DALI reads the setting once), interleaved: steady-state
images/s, page faults and system time per image over the epochs after the first
(`bench_epochs.py`'s worker process: the loader made and warmed up as `imgprep train` does).

Usage: python benchmarks/bench_host_pool.py DATA [--rounds 8] [--epochs 6] [--json-out F]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_epochs  # noqa: E402  (beside this file: its worker process runs the loader's epochs)

ARMS = {"DALI's default (32M)": "32M", "the loader's (2M)": None}


def _steady(epochs: list[dict]) -> dict:
    """Medians over a worker's epochs after its first: images/s, page faults and system us an image."""
    rows = [
        {
            "rate": e["images_per_s"],
            "faults": e["minor_faults"] / e["images"],
            "sys_us": e["system_s"] / e["images"] * 1e6,
        }
        for e in epochs[1:]
    ]
    return {k: statistics.median(row[k] for row in rows) for k in ("rate", "faults", "sys_us")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    from imgprep.report import environment, summarize, write_json

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs: dict[str, list[dict]] = {k: [] for k in ARMS}
    for r in range(a.rounds):
        for name in list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]:  # each arm first in every other round
            env = {k: v for k, v in os.environ.items() if k != "DALI_MALLOC_POOL_THRESHOLD"}
            if ARMS[name] is not None:
                env["DALI_MALLOC_POOL_THRESHOLD"] = ARMS[name]
            runs[name].append(_steady(bench_epochs._run(root, a.data, a.epochs, a.batch_size, env)[1:]))
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
