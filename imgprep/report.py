"""Result files of benchmarks and experiments: JSON with the machine and versions, CSV, Markdown
tables and PNG charts."""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics

from ._mp import cpu_count
from .fileio import atomic_file, write_json_atomic

__all__ = [
    "environment",
    "summarize",
    "write_json",
    "markdown_table",
    "write_csv",
    "bar_chart",
    "line_chart",
    "save_figure",
]


def environment() -> dict:
    """Machine and library versions, saved beside every figure."""
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "imgprep",
        "torch",
        "nvidia-dali-cuda120",
        "numpy",
        "pillow",
        "opencv-python-headless",
        "simplejpeg",
        "webdataset",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": cpu_count(),
        "python": platform.python_version(),
        "gpus": gpu,
        "versions": versions,
    }


def summarize(values: list[float]) -> dict:
    """Median and spread of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 2) for v in values],
    }


def write_json(path: str, obj: dict) -> None:
    """`obj` as indented JSON at `path` (atomically; the folder is created)."""
    write_json_atomic(path, obj)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub Markdown table of `rows` (dicts) with `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned table for the terminal."""
    cells = [columns] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.rjust(w) if j else v.ljust(w) for j, (v, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    )


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    """`rows` as CSV with a header of `columns` (atomically)."""
    with atomic_file(path, "w") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)


def bar_chart(
    path: str,
    labels: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    title: str,
    errors: dict[str, tuple[list[float], list[float]]] | None = None,
) -> None:
    """Grouped bar chart (one group per label, one bar per series), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    n = max(1, len(series))
    w = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) + 2), 4))
    for i, (name, vals) in enumerate(series.items()):
        err = None
        if errors and name in errors:
            lo, hi = errors[name]
            err = [np.subtract(vals, lo), np.subtract(hi, vals)]
        ax.bar(x + (i - (n - 1) / 2) * w, vals, w, label=name, yerr=err, capsize=3)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n > 1:
        ax.legend()
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as PNG at `path` (atomically; the folder is created), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with atomic_file(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def line_chart(
    path: str,
    series: dict[str, tuple[list[float], list[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    hline: tuple[float, str] | None = None,
) -> None:
    """Lines (name -> (x, y)) with a legend, and an optional labelled horizontal line, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
