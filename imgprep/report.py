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
        "cpu_model": cpu_model(),
        "cpu": cpu_details(),
        "cores": cpu_count(),
        "python": platform.python_version(),
        "gpus": gpu,
        "versions": versions,
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo as {key: value}; {} where there is none."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break  # the first processor's block is enough
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), e.g. 'AMD EPYC' or 'Intel(R) Xeon(R) ...'."""
    return _cpuinfo().get("model name") or platform.processor() or None


# the vector and matrix extensions that change what the codecs and inductor's kernels run
_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "neon", "asimd", "sve")


def cpu_details() -> dict:
    """What tells two CPUs of one model name apart (Linux: /proc/cpuinfo): vendor, family and
    model numbers, and which of the vector extensions in `_ISA` it has; {} elsewhere. A VM's
    "AMD EPYC" may be a Zen 3 with AVX2 only or a Zen 5 with AVX-512."""
    info = _cpuinfo()
    if not info:
        return {}
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "vendor": info.get("vendor_id"),
        "family": info.get("cpu family"),
        "model": info.get("model"),
        "extensions": [x for x in _ISA if x in flags],
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
    notes: dict[str, list[str]] | None = None,
    subtitle: str | None = None,
) -> None:
    """Grouped bar chart, PNG: one group per label, one bar (and colour, in the legend) per series,
    error bars from `errors` (low, high), a note such as the speed-up written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    n = max(1, len(series))
    w = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, (0.5 + 0.45 * n) * len(labels) + 2), 4.5))
    for i, (name, vals) in enumerate(series.items()):
        vals = [v if v is not None else float("nan") for v in vals]
        err = None
        if errors and name in errors:
            lo, hi = errors[name]
            err = [np.maximum(0, np.subtract(vals, lo)), np.maximum(0, np.subtract(hi, vals))]
        bars = ax.bar(x + (i - (n - 1) / 2) * w, vals, w, label=name, yerr=err, capsize=3, color=f"C{i % 10}")
        if notes and name in notes:
            ax.bar_label(bars, notes[name], padding=2, fontsize=7)
    ax.set_xticks(x, labels, rotation=20 if max(map(len, labels), default=0) > 12 else 0, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def machine_line(env: dict) -> str:
    """'2 cores (x86_64), no GPU' or '16 cores (x86_64), NVIDIA H200' from `environment()`, with
    the CPU where it was recorded: '2 cores AMD EPYC (family 26 model 2; avx2, avx512f), no GPU'."""
    gpus = env.get("gpus")
    gpu = ", ".join(sorted(set(gpus))) if gpus else "no GPU"
    cpu = env.get("cpu") or {}
    if not env.get("cpu_model"):
        return f"{env.get('cores')} cores ({env.get('processor')}), {gpu}"
    facts = [f"family {cpu['family']} model {cpu['model']}"] if cpu.get("family") else []
    facts += [", ".join(x for x in cpu.get("extensions", []) if x in ("avx2", "avx512f", "amx_tile"))]
    detail = "; ".join(f for f in facts if f)
    return f"{env.get('cores')} cores {env['cpu_model']}" + (f" ({detail})" if detail else "") + f", {gpu}"


# per benchmark: (group columns, variant column, value, low, high, speed-up column, baseline's name)
_BENCH_CHARTS = {
    "load": (("batch_size", "workers"), "loader", "images_per_second", "min", "max", "vs_baseline", "baseline"),
    "prepare": ((), "variant", "images_per_second", "min", "max", "vs_naive", "naive Pillow"),
}
_TRAIN_SERIES = {
    "model alone (synthetic input)": "model_synthetic",
    "training fed by the loader": "training_with_loader",
    "loader alone": "loader_only",
}


def variants_chart(path: str, results: dict[str, dict], reference: str, title: str, env: dict) -> None:
    """The chart of a `benchmarks/` script's results ({variant: {median_images_per_second, min,
    max}}): one bar per variant with its min-max, its ratio to `reference` on the bar, the
    machine and its CPU in the subtitle."""
    names = list(results)
    med = [results[n]["median_images_per_second"] for n in names]
    ref = results[reference]["median_images_per_second"]
    errors = {"images/s": ([results[n]["min"] for n in names], [results[n]["max"] for n in names])}
    notes = {"images/s": [f"{m:,.0f}\n{m / ref:.2f}x" for m in med]}
    bar_chart(path, names, {"images/s": med}, "images per second", f"{title} (ratio to {reference})", errors, notes,
              machine_line(env))  # fmt: skip


def _group_label(row: dict, keys) -> str:
    names = {"batch_size": "batch", "workers": "workers"}
    return ", ".join(f"{names.get(k, k)} {row[k]}" for k in keys) or "all"


def bench_chart(result: dict, path: str, title: str) -> None:
    """The chart of a `bench` result: grouped bars (one group per batch size and worker count or
    per placement), one colour per variant, the speed-up over the baseline on each bar, units on
    the axis and the machine in the subtitle."""
    rows, sub = result["results"], machine_line(result.get("environment", {}))
    if result["benchmark"] == "train":
        labels = [r["placement"] for r in rows]
        series = {name: [r[k] for r in rows] for name, k in _TRAIN_SERIES.items()}
        errors = {
            name: ([r[f"{k}_min"] for r in rows], [r[f"{k}_max"] for r in rows]) for name, k in _TRAIN_SERIES.items()
        }
        notes = {name: [f"{v:,.0f}" for v in vals] for name, vals in series.items()}
        bar_chart(path, labels, series, "images per second", title, errors, notes, sub)
        return
    keys, var, val, lo, hi, speed, base = _BENCH_CHARTS[result["benchmark"]]
    groups = list(dict.fromkeys(_group_label(r, keys) for r in rows))
    variants = list(dict.fromkeys(r[var] for r in rows))
    cell = {(_group_label(r, keys), r[var]): r for r in rows}

    def get(g, v, k):
        r = cell.get((g, v))
        return r[k] if r is not None and r.get(k) is not None else None

    series = {v: [get(g, v, val) for g in groups] for v in variants}
    errors = {v: ([get(g, v, lo) or 0 for g in groups], [get(g, v, hi) or 0 for g in groups]) for v in variants}
    notes = {v: [f"{get(g, v, speed):.2f}x" if get(g, v, speed) is not None else "" for g in groups] for v in variants}
    bar_chart(
        path,
        groups,
        series,
        "images per second",
        f"{title} (on each bar: speed-up over the {base})",
        errors,
        notes,
        sub,
    )


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
    if all(float(v).is_integer() for xs, _ in series.values() for v in xs):  # epochs: whole numbers on the axis
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
