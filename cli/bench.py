"""`imgprep bench prepare | load | train`: throughput benchmarks against the baselines."""

from __future__ import annotations

import click

from imgprep.bench import LoadBenchConfig, PrepareBenchConfig
from imgprep.trainer.config import TrainBenchConfig

from .options import config_options, user_errors


def bench_outputs(fn):
    fn = click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")(
        fn
    )
    fn = click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart.")(fn)
    return fn


def _report(result: dict, columns: list[str], title: str, json_out, plot) -> None:
    from imgprep.report import bench_chart, text_table, write_json

    click.echo(text_table(result["results"], columns))
    if json_out:
        write_json(json_out, result)
        click.echo(f"results -> {json_out}")
    if plot:
        bench_chart(result, plot, title)
        click.echo(f"chart -> {plot}")


@click.group()
def bench() -> None:
    """Throughput benchmarks against the baselines (median and spread, JSON, PNG, table)."""


@bench.command("prepare")
@click.argument("src", type=click.Path())
@config_options(PrepareBenchConfig, skip=("src",))
@bench_outputs
@user_errors
def bench_prepare(json_out, plot, **options) -> None:
    """Images/s of `prepare` for each worker count against the naive Pillow script."""
    from imgprep.bench import bench_prepare as run

    r = run(PrepareBenchConfig(**options), log=click.echo)
    _report(
        r,
        ["variant", "images_per_second", "min", "max", "vs_naive"],
        f"prepare, {r['images']} images",
        json_out,
        plot,
    )


@bench.command("load")
@click.argument("data", type=click.Path())
@config_options(LoadBenchConfig, skip=("data",))
@bench_outputs
@user_errors
def bench_load(json_out, plot, **options) -> None:
    """Images/s of the DALI pipeline and the torch fallback against a torchvision-style baseline."""
    from imgprep.bench import bench_load as run

    r = run(LoadBenchConfig(**options), log=click.echo)
    _report(
        r,
        ["loader", "batch_size", "workers", "images_per_second", "min", "max", "vs_baseline"],
        "loaders, train mode",
        json_out,
        plot,
    )


@bench.command("train")
@click.argument("data", type=click.Path())
@config_options(TrainBenchConfig, skip=("data",))
@bench_outputs
@user_errors
def bench_train(json_out, plot, **options) -> None:
    """Training images/s of AlexNet per placement, beside the loader's own rate."""
    from imgprep.trainer.bench import bench_train as run

    cfg = TrainBenchConfig(**options)
    r = run(cfg, log=click.echo)
    _report(
        r,
        [
            "placement",
            "model_synthetic",
            "training_with_loader",
            "loader_only",
            "limited_by",
            "flops_per_image",
            "mfu_model",
            "mfu_with_loader",
            "compiled",
        ],
        f"AlexNet x{cfg.width_mult}, batch {cfg.batch_size}",
        json_out,
        plot,
    )
