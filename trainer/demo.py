"""`imgprep demo`: the whole recipe on a small synthesized dataset, end to end, on any machine:
synthesize, prepare (shards + statistics), verify, train a reduced-width two-tower AlexNet,
evaluate with the centre crop and the paper's ten views."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

from imgprep.errors import ImgprepError

from .config import DemoConfig

__all__ = ["DemoConfig", "run_demo"]


_PARTS = ("images", "data", "run")


def _clear(out: str) -> None:
    """Remove the folder of an earlier demo; refuse to touch a folder that holds anything else."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out) or set(os.listdir(out)) - set(_PARTS):
        raise ImgprepError(f"{out}: holds files that are not an earlier demo's; choose a new --out folder")
    shutil.rmtree(out)


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run every stage; returns a report dict. Re-running starts from scratch in `out`."""
    from imgprep._mp import resolve_workers
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize
    from imgprep.verify import verify

    from .config import EvalConfig, TrainConfig
    from .runtime import evaluate_run
    from .train import train

    _clear(cfg.out)
    workers = resolve_workers(cfg.workers)
    t_all = t = time.perf_counter()
    src, data, run = (os.path.join(cfg.out, d) for d in _PARTS)
    synth = SynthConfig(src, cfg.classes, cfg.per_class, cfg.val_per_class, cfg.seed)
    synthesize(synth, workers=workers)
    log(
        f"[1/5] synthesized {cfg.classes} classes x ({cfg.per_class} train + {synth.val_count} val) images "
        f"in {time.perf_counter() - t:.0f} s -> {src}"
    )
    s = prepare(PrepareConfig(src, data, shard_size=250, seed=cfg.seed, workers=workers), progress=False, log=log)
    log(f"[2/5] prepared {s['images']} images at {s['images_per_second']:.0f} img/s -> {data}")
    v = verify(data, workers)
    if v["problems"]:
        raise ImgprepError(f"verify found {len(v['problems'])} problems, first: {v['problems'][0]}")
    log(f"[3/5] verified {v['shards']} shards, {v['samples']} samples")
    t = time.perf_counter()
    log(
        f"[4/5] training a {cfg.width_mult}-width two-tower AlexNet for {cfg.epochs} epochs on the CPU "
        f"(He init, lr 0.01, batch {cfg.batch_size}) ..."
    )
    last = train(
        TrainConfig(
            data,
            run,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            init="kaiming",
            width_mult=cfg.width_mult,
            lr_patience=2,
            backend=cfg.backend,
            workers=workers,
            seed=cfg.seed,
            devices="auto",
        ),
        progress=False,
        log=lambda line: log("      " + line),
    )
    if last.get("preempted"):
        raise ImgprepError(f"{run}: stopped by SIGTERM before training finished; run the demo again")
    train_s = time.perf_counter() - t
    centre = evaluate_run(EvalConfig(run, data, False, backend=cfg.backend, workers=workers))
    ten = evaluate_run(EvalConfig(run, data, True, backend=cfg.backend, workers=workers))
    chance = 1 - 1 / cfg.classes
    log(
        f"[5/5] validation top-1 error: centre crop {centre['top1_error']:.1%}, ten views {ten['top1_error']:.1%} "
        f"(chance {chance:.0%}); top-5 error {ten['top5_error']:.1%}"
    )
    report = {
        "prepare": s,
        "last_epoch": last,
        "centre": centre,
        "ten_crop": ten,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "chance_top1_error": chance,
    }
    log(
        f"done in {report['total_seconds']:.0f} s: {ten['images']} validation images, accuracy "
        f"{1 - ten['top1_error']:.1%} vs {1 / cfg.classes:.0%} by chance; run folder {run}"
    )
    return report
