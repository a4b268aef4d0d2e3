"""`imgprep demo`: the whole recipe on a small synthetic set, end to end, on any machine."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of `imgprep demo`."""

    out: str = "demo-out"
    classes: int = 10
    per_class: int = 100
    val_per_class: int = 20
    seed: int = 0
    workers: int = 0


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Synthesize, prepare, verify. Returns a report dict; re-running starts from scratch."""
    from .prepare import PrepareConfig, _resolve_workers, prepare
    from .synth import SynthConfig, synthesize
    from .verify import recompute_stats, verify

    if os.path.exists(cfg.out):
        shutil.rmtree(cfg.out)
    workers = _resolve_workers(cfg.workers)
    report = {}
    t = time.perf_counter()
    src = os.path.join(cfg.out, "images")
    synthesize(SynthConfig(src, cfg.classes, cfg.per_class, cfg.val_per_class, cfg.seed), workers=workers)
    report["synth_seconds"] = round(time.perf_counter() - t, 1)
    log(f"[1/3] synthesized {cfg.classes} classes x ({cfg.per_class} train + {cfg.val_per_class} val) images "
        f"in {report['synth_seconds']} s -> {src}")
    data = os.path.join(cfg.out, "data")
    s = prepare(PrepareConfig(src, data, shard_size=250, seed=cfg.seed, workers=workers), progress=True, log=log)
    report["prepare"] = s
    log(f"[2/3] prepared {s['images']} images at {s['images_per_second']:.0f} img/s -> {data}")
    v = verify(data, workers)
    if v["problems"]:
        raise RuntimeError(f"verify found problems: {v['problems'][:3]}")
    st = recompute_stats(data, workers)
    report["stats"] = st
    log(f"[3/3] verified {v['shards']} shards / {v['samples']} samples; RGB mean "
        f"{', '.join(f'{x:.1f}' for x in st['stored']['mean'])}, PCA eigenvalues "
        f"{', '.join(f'{x:.0f}' for x in st['stored']['eigval'])}")
    return report
