"""`imgprep plot`: the curves of one or more runs, read from their metrics.jsonl.

Two panels against epoch: top-1 error (training solid, validation dashed) and loss (the same),
one colour per run with a legend; the epochs where the learning rate dropped are marked with a
dotted line in the run's colour.
"""

from __future__ import annotations

import os

from imgprep.report import save_figure

from .runtime import read_epochs

__all__ = ["lr_drops", "plot_runs"]


def lr_drops(epochs: list[dict]) -> list[int]:
    """Epochs whose learning rate is lower than the epoch before's (the plateau schedule's drops)."""
    return [b["epoch"] for a, b in zip(epochs, epochs[1:], strict=False) if b["lr"] < a["lr"] * (1 - 1e-9)]


def plot_runs(run_dirs: list[str], out: str, labels: list[str] | None = None) -> dict:
    """Draw the runs' curves into `out` (PNG); returns {label: epochs drawn}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_epochs(d) for d in run_dirs]
    labels = labels or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, epochs) in enumerate(zip(labels, runs, strict=True)):
        colour = f"C{i % 10}"
        x = [e["epoch"] for e in epochs]
        for ax, train_key, val_key in (
            (ax_err, "train_top1_error", "val_top1_error"),
            (ax_loss, "train_loss", "val_loss"),
        ):
            ax.plot(x, [e[train_key] for e in epochs], color=colour, label=f"{label} train")
            val = [(e["epoch"], e[val_key]) for e in epochs if e.get(val_key) is not None]
            if val:
                ax.plot([v[0] for v in val], [v[1] for v in val], color=colour, linestyle="--", label=f"{label} val")
            for k, drop in enumerate(lr_drops(epochs)):
                ax.axvline(
                    drop - 0.5, color=colour, linestyle=":", linewidth=1, label=f"{label} lr / 10" if k == 0 else None
                )
    ax_err.set_ylabel("top-1 error")
    for ax in (ax_err, ax_loss):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_loss.set_ylabel("cross-entropy loss")
    for ax in (ax_err, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_err.legend(fontsize=8)
    ax_err.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.suptitle("training (solid) and validation (dashed); dotted: learning-rate drops")
    save_figure(fig, out)
    return {label: len(epochs) for label, epochs in zip(labels, runs, strict=True)}
