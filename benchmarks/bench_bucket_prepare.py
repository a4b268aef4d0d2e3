"""`imgprep prepare` with SRC and OUT on local disk or in an S3 bucket (SeaweedFS `weed mini` on
127.0.0.1, started here): images/s of the whole run for each of the four combinations, interleaved,
`--rounds` times; medians with min-max. On a small machine the server shares its cores.

Usage: python benchmarks/bench_bucket_prepare.py [--images 1200] [--workers 2] [--rounds 3] [--json-out F]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tests"))  # the test suite's S3 server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    from servers import seaweedfs_session

    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.remote import Store
    from imgprep.report import environment, summarize, write_json
    from imgprep.synth import SynthConfig, synthesize

    with seaweedfs_session("imgprep-bench-bucket-prepare-") as (tmp, sw):
        os.environ["XDG_CACHE_HOME"] = os.path.join(tmp, "xdg")
        src = os.path.join(tmp, "src")
        synthesize(SynthConfig(src, classes=10, per_class=a.images // 12, val_per_class=a.images // 60))
        n = sum(len(fs) for _, _, fs in os.walk(src))
        st = Store("s3://bench/src")
        for d, _, fs in os.walk(src):
            for f in fs:
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    st.put(os.path.relpath(p, src), fh.read())
        combos = {
            "local -> local": (src, "local"),
            "bucket -> local": ("s3://bench/src", "local"),
            "local -> bucket": (src, "bucket"),
            "bucket -> bucket": ("s3://bench/src", "bucket"),
        }
        rates = {k: [] for k in combos}
        for r in range(a.rounds):
            for name, (s, o) in combos.items():
                out = os.path.join(tmp, "out") if o == "local" else f"s3://bench/out-{r}-{name.split()[0]}"
                shutil.rmtree(os.path.join(tmp, "out"), ignore_errors=True)
                t = time.perf_counter()
                prepare(PrepareConfig(s, out, workers=a.workers), progress=False, log=lambda x: None)
                rates[name].append(n / (time.perf_counter() - t))
                print(name, round(rates[name][-1]), "images/s", flush=True)
    res = {
        "what": "imgprep prepare, whole run, images/s: SRC and OUT on local disk or in an S3 bucket (loopback)",
        "command": "python benchmarks/bench_bucket_prepare.py " + " ".join(sys.argv[1:]),
        "machine": environment(),
        "images": n,
        "workers": a.workers,
        "figures": {k: summarize(v) for k, v in rates.items()},
    }
    print({k: round(v["median"]) for k, v in res["figures"].items()})
    if a.json_out:
        write_json(a.json_out, res)


if __name__ == "__main__":
    main()
