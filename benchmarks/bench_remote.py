"""The DALI loader (CPU, full paper augmentation) over one prepared dataset read from local disk,
from an S3 bucket through loopback (SeaweedFS `weed mini`, started here), and from the bucket
through the fault proxy throttled to a few rates; reported as ratios to the local rate.

Per source: the time to the first batch and the images/s of a cold epoch (empty cache: shards
fetched while the loader reads) and of a warm one (the whole dataset cached), and the cores the
server (and proxy, each in its own process) used during the cold epoch: on a small machine they
share its cores with the decoder. Sources interleaved,
`--rounds` times; medians with min-max.

Usage: python benchmarks/bench_remote.py [--images 2400] [--shard-size 200] [--rates 200,50,20]
       [--rounds 3] [--json-out docs/remote.json] [--plot docs/remote.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tests"))  # the test servers: weed mini and the fault proxy


def _epoch(loader) -> tuple[float, float]:
    t = time.perf_counter()
    it = iter(loader)
    n = len(next(it)[1])
    first = time.perf_counter() - t
    for _, y in it:
        n += len(y)
    return first, n / (time.perf_counter() - t)


def _proxy(host: str, port: str, rate: float):
    """A throttled fault proxy in its own process (so that it takes no time from this one): (process, URL)."""
    import subprocess

    p = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "tests", "servers.py"), "proxy", host, port, str(rate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return p, p.stdout.readline().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2400)
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rates", default="200,50,20", help="proxy rates, MB/s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()

    from servers import cpu_seconds, seaweedfs_session

    from imgprep.cache import PREFETCH_CONNECTIONS
    from imgprep.dataset import open_dataset
    from imgprep.loaders import make_loader
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.report import environment, summarize, write_json
    from imgprep.synth import SynthConfig, synthesize
    from imgprep.upload import UploadConfig, upload

    with seaweedfs_session("imgprep-bench-remote-") as (tmp, sw):
        src, data = os.path.join(tmp, "src"), os.path.join(tmp, "data")
        synthesize(SynthConfig(src, classes=10, per_class=a.images // 10, val_per_class=1))
        prepare(PrepareConfig(src, data, shard_size=a.shard_size), progress=False, log=lambda s: None)
        m = open_dataset(data).manifest
        per_image = sum(sh["bytes"] for sh in m["splits"]["train"]["shards"]) / m["splits"]["train"]["count"]
        url = "s3://bench/data"
        upload(UploadConfig(out=data, url=url), log=lambda s: None)
        host, port = sw.endpoint.rsplit(":", 1)
        rates = [float(r) for r in a.rates.split(",") if r]
        proxies = {r: _proxy(host.split("//")[1], port, r * 1e6) for r in rates}  # each in its own process
        sources = {"local": None, "bucket (loopback)": None, **{f"bucket at {r:g} MB/s": r for r in rates}}
        runs = {k: {"cold_first": [], "cold": [], "warm_first": [], "warm": [], "server_cpu": []} for k in sources}
        for _ in range(a.rounds):
            for name, rate in sources.items():
                cache = os.path.join(tmp, "cache")
                shutil.rmtree(cache, ignore_errors=True)
                os.environ["AWS_ENDPOINT_URL"] = proxies[rate][1] if rate else sw.endpoint
                lo = make_loader(
                    data if name == "local" else url,
                    "train",
                    a.batch_size,
                    "train",
                    backend="dali",
                    device="cpu",
                    cache_dir=cache,
                )
                _epoch(lo)  # a first epoch on this loader: numba and DALI start-up, counted apart
                if name != "local":
                    shutil.rmtree(cache)  # cold again: every shard fetched while reading
                    lo.cache._make_folder()
                busy = [sw.proc.pid] + ([proxies[rate][0].pid] if rate else [])
                cpu = sum(cpu_seconds(p) for p in busy)
                t = time.perf_counter()
                f, r = _epoch(lo)
                # the share of the machine's cores the server (and proxy) used during the cold epoch
                runs[name]["server_cpu"].append((sum(cpu_seconds(p) for p in busy) - cpu) / (time.perf_counter() - t))
                runs[name]["cold_first"].append(f)
                runs[name]["cold"].append(r)
                f, r = _epoch(lo)
                runs[name]["warm_first"].append(f)
                runs[name]["warm"].append(r)
                print(name, {k: round(v[-1], 3) for k, v in runs[name].items()}, flush=True)
        for p, _ in proxies.values():
            p.kill()
    local = statistics.median(runs["local"]["warm"])
    local_first = statistics.median(runs["local"]["warm_first"])
    figures = {}
    for name, v in runs.items():
        figures[name] = {k: summarize(x) for k, x in v.items()}
        figures[name]["cold_vs_local"] = round(statistics.median(v["cold"]) / local, 3)
        figures[name]["warm_vs_local"] = round(statistics.median(v["warm"]) / local, 3)
        figures[name]["cold_first_batch_minus_local_s"] = round(statistics.median(v["cold_first"]) - local_first, 3)
        rate = sources[name]
        if rate:  # the most images/s the prefetcher's connections can carry, and the share the cold epoch used
            bound = PREFETCH_CONNECTIONS * rate * 1e6 / per_image
            figures[name]["link_bound_images_per_s"] = round(bound, 1)
            figures[name]["cold_vs_link_bound"] = round(statistics.median(v["cold"]) / bound, 3)
    res = {
        "what": "DALI training epochs (CPU, full augmentation) from local disk and from an S3 bucket",
        "command": "python benchmarks/bench_remote.py " + " ".join(sys.argv[1:]),
        "machine": environment(),
        "images": a.images,
        "shard_size": a.shard_size,
        "bytes_per_image": round(per_image),
        "batch_size": a.batch_size,
        "rounds": a.rounds,
        "figures": figures,
    }
    print(json.dumps(figures, indent=1))
    if a.json_out:
        write_json(a.json_out, res)
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(figures)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [figures[n]["cold_vs_local"] for n in names], 0.4, label="cold cache")
        ax.bar([i + 0.2 for i in x], [figures[n]["warm_vs_local"] for n in names], 0.4, label="warm cache")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.9, color="gray", lw=0.8, ls="--")
        ax.set_xticks(list(x), names, fontsize=8)
        ax.set_ylabel("images/s vs local disk")
        ax.set_title(f"DALI loader from a bucket ({res['machine'].get('cpu', '')})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
    main()
