"""Training epochs of the DALI loader (CPU, full paper augmentation): the loader's start-up (made
and warmed up, as `imgprep train` does before its first epoch; torch imported before, timed
apart), then the time from the start of each epoch to its first batch, each epoch's images/s and
its minor page faults and system CPU seconds (fresh memory: on a VM whose page faults cost 3-10 us
the first epoch's growth of the process by ~300 MB shows as system time), and per round the first
epoch's images/s over the median of the later ones; for this checkout and, with `--before DIR`,
another checkout (a clone with a venv of its own), run in separate processes, interleaved;
medians with min-max.

Usage: python benchmarks/bench_epochs.py [--data DIR] [--images 1200] [--epochs 4] [--rounds 3]
       [--before DIR] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        it = iter(lo)
        n = len(next(it)[1])
        first = time.perf_counter() - t
        for _, y in it:
            n += len(y)
        dt = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.append(
            {
                "images": n,
                "first_batch_s": first,
                "images_per_s": n / dt,
                "minor_faults": r1.ru_minflt - r0.ru_minflt,
                "system_s": r1.ru_stime - r0.ru_stime,
            }
        )
    print(json.dumps(out))


def _run(root: str, data: str, epochs: int, batch: int, environ: dict | None = None) -> list[dict]:
    """One worker process of the checkout at `root` (in `environ`, default this process's):
    its start-up record, then one record per epoch."""
    env = {**(os.environ if environ is None else environ), "PYTHONPATH": root}
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

    def per_epoch(rs: list[list[dict]], later: bool) -> dict:
        es = [e for r in rs for e in (r[1:] if later else r[:1])]
        return {m: summarize([e[m] for e in es]) for m in ("first_batch_s", "images_per_s", "minor_faults", "system_s")}

    for k, rs in runs.items():
        starts, rs = [r[0] for r in rs], [r[1:] for r in rs]
        figures[k] = {
            "import_torch_s": summarize([s["import_torch_s"] for s in starts]),
            "loader_start_s": summarize([s["start_s"] for s in starts]),
            "first_epoch": per_epoch(rs, later=False),
            "later_epochs": per_epoch(rs, later=True),
        }
        if a.epochs > 1:
            figures[k]["first_over_later_per_round"] = summarize(
                [r[0]["images_per_s"] / statistics.median(e["images_per_s"] for e in r[1:]) for r in rs]
            )
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
