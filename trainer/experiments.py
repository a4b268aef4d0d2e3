"""`imgprep experiment`: the reviewer's open questions as small, controlled series of trainings.

- ablate-conv: remove each conv layer in turn; top-1/top-5 error against the full network.
- dropout: a sweep of dropout rates.
- batch-momentum: a grid of batch size x momentum. The learning rate follows the linear scaling
  rule, lr = base_lr * batch / reference batch (Goyal et al., 2017), so that every cell takes
  steps of the same expected size per sample.
- activation: ReLU vs tanh: epochs (and wall time) to a target training error (the paper's
  figure 1, 25% on CIFAR-10), and the curves of training error against epochs.

Every cell runs with `--seeds N` seeds (seed, seed + 1, ...): results.csv has one row per run,
summary.csv one per cell with each metric's mean, std (sample, n - 1) and n; results.md and the
chart show mean +- std. Every run lives in OUT/runs/<cell>-seed<k>/: a finished run is not
repeated, an interrupted one resumes. The same seeds give the same tables (wall-clock times go
to a separate timing table).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from imgprep.errors import ImgprepError
from imgprep.fileio import atomic_file, write_json_atomic
from imgprep.report import bar_chart, line_chart, markdown_table, text_table, write_csv

from .config import CONV_LAYERS, ExperimentConfig, TrainConfig
from .runtime import CHECKPOINT, load_checkpoint, read_epochs
from .train import train

__all__ = ["ExperimentConfig", "EXPERIMENTS", "run_experiment", "summarize_cells"]


def _run(tc: TrainConfig, log) -> dict:
    """Train one run (skipping it if finished, resuming it if interrupted) and read its metrics."""
    ck_path = os.path.join(tc.run_dir, CHECKPOINT)
    done = os.path.exists(ck_path) and load_checkpoint(tc.run_dir)["epoch"] >= tc.epochs
    if done:
        log(f"  {os.path.basename(tc.run_dir)}: finished earlier, kept")
    else:
        log(f"  {os.path.basename(tc.run_dir)}: training {tc.epochs} epochs")
        last = train(tc, resume=os.path.exists(ck_path), progress=False, log=lambda s: None)
        if last.get("preempted"):  # SIGTERM: the run saved its place; the series stops with it
            raise ImgprepError(
                f"{tc.run_dir}: stopped by SIGTERM (checkpoint saved); run the same command again to continue"
            )
    return {"epochs": read_epochs(tc.run_dir)}


def _final(res: dict) -> dict:
    last = res["epochs"][-1]
    return {
        "val_top1_error": last.get("val_top1_error"),
        "val_top5_error": last.get("val_top5_error"),
        "train_top1_error": last["train_top1_error"],
        "train_loss": last["train_loss"],
    }


@dataclass
class Cell:
    """One setting of an experiment: its columns in the tables, its run name, its TrainConfig changes."""

    settings: dict
    name: str
    train_kw: dict = field(default_factory=dict)


@dataclass
class Experiment:
    cells: Callable[[ExperimentConfig], list[Cell]]
    metrics: list[str]  # summarized over seeds
    derive: Callable[[list[dict], ExperimentConfig], None] | None = None  # adds metrics to one seed's rows


def _ablate_cells(cfg):
    return [
        Cell({"removed": n}, f"remove-{n}", {"remove": () if n == "none" else (n,)}) for n in ("none",) + CONV_LAYERS
    ]


def _ablate_derive(rows, cfg):
    full = rows[0]["val_top1_error"]
    for r in rows:
        ok = full is not None and r["val_top1_error"] is not None
        r["top1_change"] = r["val_top1_error"] - full if ok else None


def _dropout_cells(cfg):
    return [Cell({"dropout": p}, f"dropout-{p}", {"dropout": p}) for p in cfg.dropouts]


def _dropout_derive(rows, cfg):
    for r in rows:
        r["generalization_gap"] = (
            r["val_top1_error"] - r["train_top1_error"] if r["val_top1_error"] is not None else None
        )


def _batch_momentum_cells(cfg):
    return [
        Cell(
            {"batch_size": b, "momentum": m, "lr": cfg.lr * b / cfg.reference_batch},
            f"batch{b}-momentum{m}",
            {"batch_size": b, "lr": cfg.lr * b / cfg.reference_batch, "momentum": m},
        )
        for b in cfg.batch_sizes
        for m in cfg.momenta
    ]


def _activation_cells(cfg):
    return [Cell({"activation": a}, f"activation-{a}", {"activation": a}) for a in ("relu", "tanh")]


def _activation_derive(rows, cfg):
    for r in rows:
        reach = next((e for e in r["curve"] if e["train_top1_error"] <= cfg.target_error), None)
        r["target_train_error"] = cfg.target_error
        r["epochs_to_target"] = reach["epoch"] if reach else None
        r["seconds_to_target"] = round(sum(e["seconds"] for e in r["curve"][: reach["epoch"]]), 2) if reach else None


# in the order of config.EXPERIMENT_NAMES (the CLI's choices)
EXPERIMENTS: dict[str, Experiment] = {
    "ablate-conv": Experiment(
        _ablate_cells, ["val_top1_error", "val_top5_error", "top1_change", "train_top1_error"], _ablate_derive
    ),
    "dropout": Experiment(
        _dropout_cells, ["val_top1_error", "val_top5_error", "train_top1_error", "generalization_gap"], _dropout_derive
    ),
    "batch-momentum": Experiment(_batch_momentum_cells, ["val_top1_error", "val_top5_error", "train_top1_error"]),
    "activation": Experiment(
        _activation_cells, ["epochs_to_target", "train_top1_error", "val_top1_error"], _activation_derive
    ),
}


def _mean_std(values: list) -> tuple[float | None, float | None, int]:
    """Mean, sample std (n - 1; None below two values) and count of the values that are not None."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None, 0
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return mean, std, len(v)


def summarize_cells(rows: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """One row per cell (distinct `keys` values, in first-seen order): `n` runs and, per metric,
    `<metric>_mean`, `<metric>_std` and (where some runs have none) `<metric>_n`."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, runs in cells.items():
        row = {**dict(zip(keys, key, strict=True)), "n": len(runs)}
        for m in metrics:
            mean, std, n = _mean_std([r.get(m) for r in runs])
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
            if n != len(runs):
                row[f"{m}_n"] = n
        out.append(row)
    return out


def _pm(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def _shown(summary: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Summary rows for reading: the cell's settings, n, and each metric as 'mean ± std'."""
    return [
        {**{k: r[k] for k in keys}, "n": r["n"], **{m: _pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics}}
        for r in summary
    ]


def _runs(name: str, cfg: ExperimentConfig, log) -> tuple[list[dict], list[str]]:
    """Every (cell, seed) run, trained or kept: rows of settings, seed, final metrics and curve."""
    spec = EXPERIMENTS[name]
    cells = spec.cells(cfg)
    rows = []
    for k in range(cfg.seeds):
        seed = cfg.seed + k
        seed_rows = []
        for cell in cells:
            res = _run(cfg.train_config(f"{cell.name}-seed{seed}", seed=seed, **cell.train_kw), log)
            seed_rows.append({**cell.settings, "seed": seed, **_final(res), "curve": res["epochs"]})
        if spec.derive is not None:
            spec.derive(seed_rows, cfg)
        rows += seed_rows
    return rows, list(cells[0].settings)


def _write_tables(name: str, cfg: ExperimentConfig, rows: list[dict], keys: list[str], summary: list[dict]) -> None:
    metrics = EXPERIMENTS[name].metrics
    write_csv(os.path.join(cfg.out, "results.csv"), rows, [*keys, "seed", *metrics])
    cols = [*keys, "n", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    cols += sorted({c for r in summary for c in r if c.endswith("_n") and c != "n"})
    write_csv(os.path.join(cfg.out, "summary.csv"), summary, cols)
    shown = _shown(summary, keys, metrics)
    with atomic_file(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(
            f"# {name}\n\n{cfg.epochs} epochs, width x{cfg.width_mult}, batch {cfg.batch_size}, lr {cfg.lr}, "
            f"init {cfg.init}, seeds {cfg.seed}..{cfg.seed + cfg.seeds - 1}: mean ± std over {cfg.seeds} seeds\n\n"
            + markdown_table(shown, [*keys, "n", *metrics])
        )
    if name == "activation":  # wall-clock time varies between machines and runs: kept apart
        write_csv(
            os.path.join(cfg.out, "timing.csv"), rows, ["activation", "seed", "epochs_to_target", "seconds_to_target"]
        )


def _charts(name: str, cfg: ExperimentConfig, rows: list[dict], keys: list[str], summary: list[dict]) -> None:
    metric = "epochs_to_target" if name == "activation" else "val_top1_error"
    labels = [", ".join(f"{k} {r[k]}" for k in keys if k != "lr") for r in summary]
    nan = float("nan")
    means = [r[f"{metric}_mean"] if r[f"{metric}_mean"] is not None else nan for r in summary]
    stds = [r[f"{metric}_std"] or 0.0 for r in summary]
    bar_chart(
        os.path.join(cfg.out, "chart.png"),
        labels,
        {metric: means},
        metric.replace("_", " ") + f" (mean ± std, {cfg.seeds} seed{'s' * (cfg.seeds > 1)})",
        f"{name} ({cfg.epochs} epochs, width x{cfg.width_mult})",
        errors={
            metric: (
                [m - s for m, s in zip(means, stds, strict=True)],
                [m + s for m, s in zip(means, stds, strict=True)],
            )
        },
    )
    if name == "activation":
        curves = {}
        for act in ("relu", "tanh"):
            per_seed = [[e["train_top1_error"] for e in r["curve"]] for r in rows if r["activation"] == act]
            n = min(len(c) for c in per_seed)
            curves[act] = [sum(c[i] for c in per_seed) / len(per_seed) for i in range(n)]
        line_chart(
            os.path.join(cfg.out, "curves.png"),
            {act: (list(range(1, len(v) + 1)), v) for act, v in curves.items()},
            "epoch",
            "training top-1 error",
            f"ReLU vs tanh (mean of {cfg.seeds} seed{'s' * (cfg.seeds > 1)}), as in the paper's figure 1",
            hline=(cfg.target_error, f"target {cfg.target_error:.0%}"),
        )


def _ratio(summary: list[dict]) -> float | None:
    """tanh's mean epochs to the target over ReLU's (the paper: six times as many on CIFAR-10)."""
    by = {r["activation"]: r["epochs_to_target_mean"] for r in summary}
    return by["tanh"] / by["relu"] if by.get("tanh") and by.get("relu") else None


def run_experiment(name: str, cfg: ExperimentConfig, log=print) -> list[dict]:
    """Run (or finish) an experiment series; write results.csv (one row per run), summary.csv (one
    per cell), results.md and chart.png (mean +- std), and for activation curves.png, into cfg.out.
    Returns the summary rows."""
    if name not in EXPERIMENTS:
        raise ImgprepError(f"unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)}")
    cfg = cfg.resolved()
    os.makedirs(cfg.out, exist_ok=True)
    write_json_atomic(os.path.join(cfg.out, "experiment.json"), {"experiment": name, "config": asdict(cfg)})
    rows, keys = _runs(name, cfg, log)
    summary = summarize_cells(rows, keys, EXPERIMENTS[name].metrics)
    _write_tables(name, cfg, rows, keys, summary)
    _charts(name, cfg, rows, keys, summary)
    if name == "activation":
        ratio = _ratio(summary)
        write_json_atomic(os.path.join(cfg.out, "ratio.json"), {"tanh_over_relu_epochs_to_target": ratio})
        log(
            f"tanh needs {ratio:.2f}x the epochs of ReLU to reach {cfg.target_error:.0%}"
            if ratio
            else f"not both reached {cfg.target_error:.0%} training error: no ratio"
        )
    metrics = EXPERIMENTS[name].metrics
    log(text_table(_shown(summary, keys, metrics), [*keys, "n", *metrics]))
    return summary
