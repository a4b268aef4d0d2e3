"""`imgprep load`: iterate the loader over a prepared dataset and report its speed."""

from __future__ import annotations

import json
import os

import click

from imgprep.loader_base import LoaderConfig

from .options import config_options, user_errors


@click.command()
@click.argument("data", type=click.Path())
@config_options(LoaderConfig, skip=("root",))
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after N batches (overrides --epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def load(data, epochs, steps, as_json, **options) -> None:
    """Iterate the loader over DATA and report images/s and batch latency."""
    import time

    t0 = time.perf_counter()
    from imgprep.loader_base import resolve_backend
    from imgprep.loaders import make_loader
    from imgprep.timing import time_loader

    resolve_backend(options["backend"])  # imports DALI where it is used: timed apart from the start
    import torch  # noqa: F401

    t1 = time.perf_counter()
    loader = make_loader(data, **options)
    r = {
        **time_loader(loader, epochs=epochs, steps=steps, started=t1),
        "import_seconds": round(t1 - t0, 3),
        "backend": loader.cfg.backend,
        "device": loader.device,
        "mode": loader.cfg.mode,
        "batch_size": loader.cfg.batch_size,
        "corrupt_skipped": loader.corrupt_skipped,
    }
    if as_json:
        click.echo(json.dumps(r))
        return
    lat = r["batch_latency_ms"] or {}
    click.echo(
        f"{r['backend']} on {r['device']}: {r['batches']} batches, {r['images']:,} images, "
        f"{r['images_per_second'] or 0:,.0f} img/s, batch latency median {lat.get('median', 0):.1f} ms "
        f"(p90 {lat.get('p90', 0):.1f} ms); first batch {r['first_batch_seconds']:.2f} s after "
        f"{r['import_seconds']:.2f} s of imports"
        + (f"; {r['cores_busy']:.2f} of the machine's {os.cpu_count()} cores busy" if r["cores_busy"] else "")
    )
