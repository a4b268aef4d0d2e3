"""`imgprep experiment`: the reviewer's open questions as small, controlled series of trainings.

- ablate-conv: remove each conv layer in turn; top-1/top-5 error against the full network.
- dropout: a sweep of dropout rates.
- batch-momentum: a grid of batch size x momentum. The learning rate follows the linear scaling
  rule, lr = base_lr * batch / reference batch (Goyal et al., 2017), so that every cell takes
  steps of the same expected size per sample.
- activation: ReLU vs tanh: epochs (and wall time) to a target training error (the paper's
  figure 1, 25% on CIFAR-10).

Every run lives in OUT/runs/<name>/: a finished run is not repeated, an interrupted one resumes.
The same seed gives the same table (wall-clock times go to a separate timing table).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict

from imgprep.errors import ImgprepError
from imgprep.fileio import atomic_file, write_json_atomic
from imgprep.report import bar_chart, markdown_table, text_table, write_csv

from .config import CONV_LAYERS, EXPERIMENT_NAMES, ExperimentConfig, TrainConfig
from .runtime import CHECKPOINT, load_checkpoint
from .train import train

__all__ = ["ExperimentConfig", "EXPERIMENTS", "run_experiment"]


def _run(tc: TrainConfig, log) -> dict:
    """Train one run (skipping it if finished, resuming it if interrupted) and read its metrics."""
    ck_path = os.path.join(tc.run_dir, CHECKPOINT)
    done = os.path.exists(ck_path) and load_checkpoint(tc.run_dir)["epoch"] >= tc.epochs
    if done:
        log(f"  {os.path.basename(tc.run_dir)}: finished earlier, kept")
    else:
        log(f"  {os.path.basename(tc.run_dir)}: training {tc.epochs} epochs")
        train(tc, resume=os.path.exists(ck_path), progress=False, log=lambda s: None)
    with open(os.path.join(tc.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        epochs = [json.loads(x) for x in f if '"type": "epoch"' in x]
    by_epoch = {e["epoch"]: e for e in epochs}  # a resumed run may repeat lines; the last one wins
    return {"epochs": [by_epoch[k] for k in sorted(by_epoch)]}


def _final(res: dict) -> dict:
    last = res["epochs"][-1]
    return {
        "val_top1_error": last.get("val_top1_error"),
        "val_top5_error": last.get("val_top5_error"),
        "train_top1_error": last["train_top1_error"],
        "train_loss": last["train_loss"],
    }


def ablate_conv(cfg: ExperimentConfig, log) -> tuple[list[dict], list[str]]:
    rows = []
    for name in ("none",) + CONV_LAYERS:
        res = _run(cfg.train_config(f"remove-{name}", remove=() if name == "none" else (name,)), log)
        rows.append({"removed": name, **_final(res)})
    full = rows[0]["val_top1_error"]
    for r in rows:
        r["top1_change"] = (
            (r["val_top1_error"] - full) if full is not None and r["val_top1_error"] is not None else None
        )
    return rows, ["removed", "val_top1_error", "val_top5_error", "top1_change", "train_top1_error"]


def dropout(cfg: ExperimentConfig, log) -> tuple[list[dict], list[str]]:
    rows = [{"dropout": p, **_final(_run(cfg.train_config(f"dropout-{p}", dropout=p), log))} for p in cfg.dropouts]
    for r in rows:
        r["generalization_gap"] = (
            r["val_top1_error"] - r["train_top1_error"] if r["val_top1_error"] is not None else None
        )
    return rows, ["dropout", "val_top1_error", "val_top5_error", "train_top1_error", "generalization_gap"]


def batch_momentum(cfg: ExperimentConfig, log) -> tuple[list[dict], list[str]]:
    rows = []
    for b in cfg.batch_sizes:
        for m in cfg.momenta:
            lr = cfg.lr * b / cfg.reference_batch
            res = _run(cfg.train_config(f"batch{b}-momentum{m}", batch_size=b, lr=lr, momentum=m), log)
            rows.append({"batch_size": b, "momentum": m, "lr": lr, **_final(res)})
    return rows, ["batch_size", "momentum", "lr", "val_top1_error", "val_top5_error", "train_top1_error"]


def activation(cfg: ExperimentConfig, log) -> tuple[list[dict], list[str]]:
    rows = []
    for act in ("relu", "tanh"):
        res = _run(cfg.train_config(f"activation-{act}", activation=act), log)
        reach = next((e for e in res["epochs"] if e["train_top1_error"] <= cfg.target_error), None)
        rows.append(
            {
                "activation": act,
                "target_train_error": cfg.target_error,
                "epochs_to_target": reach["epoch"] if reach else None,
                "seconds_to_target": round(sum(e["seconds"] for e in res["epochs"][: reach["epoch"]]), 2)
                if reach
                else None,
                **_final(res),
            }
        )
    return rows, ["activation", "target_train_error", "epochs_to_target", "train_top1_error", "val_top1_error"]


EXPERIMENTS: dict[str, Callable] = dict(
    zip(EXPERIMENT_NAMES, (ablate_conv, dropout, batch_momentum, activation), strict=True)
)


def run_experiment(name: str, cfg: ExperimentConfig, log=print) -> list[dict]:
    """Run (or finish) an experiment series; write results.csv, results.md, chart.png into cfg.out."""
    if name not in EXPERIMENTS:
        raise ImgprepError(f"unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)}")
    cfg = cfg.resolved()
    os.makedirs(cfg.out, exist_ok=True)
    write_json_atomic(os.path.join(cfg.out, "experiment.json"), {"experiment": name, "config": asdict(cfg)})
    rows, columns = EXPERIMENTS[name](cfg, log)
    write_csv(os.path.join(cfg.out, "results.csv"), rows, columns)
    with atomic_file(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(
            f"# {name}\n\n{cfg.epochs} epochs, width x{cfg.width_mult}, batch {cfg.batch_size}, lr {cfg.lr}, "
            f"init {cfg.init}, seed {cfg.seed}\n\n" + markdown_table(rows, columns)
        )
    if name == "activation":  # wall-clock time varies between machines and runs: kept apart
        write_csv(os.path.join(cfg.out, "timing.csv"), rows, ["activation", "epochs_to_target", "seconds_to_target"])
    key = columns[0] if name != "batch-momentum" else None
    labels = [str(r[key]) for r in rows] if key else [f"b{r['batch_size']} m{r['momentum']}" for r in rows]
    metric = "epochs_to_target" if name == "activation" else "val_top1_error"
    bar_chart(
        os.path.join(cfg.out, "chart.png"),
        labels,
        {metric: [r[metric] if r[metric] is not None else float("nan") for r in rows]},
        metric.replace("_", " "),
        f"{name} ({cfg.epochs} epochs, width x{cfg.width_mult})",
    )
    log(text_table(rows, columns))
    return rows
