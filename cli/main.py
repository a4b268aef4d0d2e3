"""`imgprep` console script: one click group, one thin command per library entry point.

Each command's options come from its config dataclass (`options.config_options`), so a command
is `run(Config(**options))`. Heavy libraries (cv2, torch, DALI) are imported inside the commands
that use them, so `imgprep --help` and `imgprep prepare` start fast.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from imgprep.bench import LoadBenchConfig, PrepareBenchConfig
from imgprep.errors import ImgprepError
from imgprep.loader_base import LoaderConfig
from imgprep.prepare import PrepareConfig
from imgprep.synth import SynthConfig
from imgprep.trainer.config import (
    EXPERIMENT_NAMES,
    DemoConfig,
    EvalConfig,
    ExperimentConfig,
    TrainBenchConfig,
    TrainConfig,
    may_change,
)
from imgprep.upload import UploadConfig

from .options import config_options, workers_option


def user_errors(fn):
    """Turn library errors, and file-system errors nothing else caught, into a one-line message and
    exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImgprepError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a path the library did not name itself: an --out in a missing or read-only folder
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}; check the path and its permissions") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


class OneLineErrors(click.Group):
    """A group whose usage errors (unknown flag, bad value) print as one line, not a usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "imgprep"
            click.echo(f"Error: {e.format_message().rstrip('.')}; see '{cmd} --help'", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="imgprep")
def main() -> None:
    """imgprep: ImageNet to AlexNet-ready WebDataset shards, a DALI loader and a two-tower trainer."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@config_options(SynthConfig, skip=("out",))
@workers_option
@user_errors
def synth(workers, **options) -> None:
    """Write a small synthetic class-folder dataset to OUT (train/ and val/)."""
    from imgprep._mp import resolve_workers
    from imgprep.synth import synthesize

    r = synthesize(SynthConfig(**options), workers=resolve_workers(workers))
    click.echo(f"wrote {r['train']} train and {r['val']} val images of {r['classes']} classes to {options['out']}")


@main.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@config_options(PrepareConfig, skip=("src", "out"))
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def prepare(progress, **options) -> None:
    """Turn the images in SRC into shuffled WebDataset shards, statistics and a manifest in OUT.

    SRC: class folders (train/<class>/, val/<class>/), the ILSVRC2012 archives with the devkit,
    or the Kaggle download. Rerun the same command to resume after an interruption.
    """
    from imgprep.prepare import prepare as run

    run(PrepareConfig(**options), progress=progress, log=click.echo)


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("url")
@config_options(UploadConfig, skip=("out", "url"))
@user_errors
def upload(out, url, **options) -> None:
    """Copy the prepared dataset OUT to object storage at URL (s3://BUCKET/PREFIX), manifest last.

    Credentials, region and endpoint come from the usual AWS variables and files (AWS_PROFILE,
    AWS_ENDPOINT_URL for an S3-compatible store). Run again after an interruption: objects already
    there are kept."""
    from imgprep.upload import upload as run

    run(UploadConfig(out=out, url=url, **options), log=click.echo)


@main.command()
@click.argument("out", type=click.Path())
@workers_option
@click.option(
    "--cache-dir", type=click.Path(file_okay=False), default="", help="A dataset at a URL: the local shard cache."
)
@user_errors
def verify(out, workers, cache_dir) -> None:
    """Check every shard of OUT against its manifest; exit 1 on any mismatch."""
    from imgprep._mp import resolve_workers
    from imgprep.verify import verify as run

    r = run(out, resolve_workers(workers), cache_dir)
    for p in r["problems"][:50]:
        click.echo(p, err=True)
    if r["problems"]:
        more = len(r["problems"]) - 50
        raise click.ClickException(
            f"{len(r['problems'])} problems in {out}" + (f" ({more} not shown)" if more > 0 else "")
        )
    click.echo(f"ok: {r['shards']} shards, {r['samples']:,} samples match the manifest")


@main.command()
@click.argument("out", type=click.Path())
@workers_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--cache-dir", type=click.Path(file_okay=False), default="", help="A dataset at a URL: the local shard cache."
)
@user_errors
def stats(out, workers, as_json, cache_dir) -> None:
    """Recompute the training statistics of OUT from its shards and compare with the stored ones."""
    from imgprep._mp import resolve_workers
    from imgprep.verify import recompute_stats

    r = recompute_stats(out, resolve_workers(workers), cache_dir)
    if as_json:
        click.echo(json.dumps(r))
        return
    click.echo(f"{r['images']:,} training images (decoded from the shards)")
    for k in ("mean", "std", "eigval"):
        click.echo(f"{k:7s} stored     {_numbers(r['stored'][k])}\n{'':7s} recomputed {_numbers(r['recomputed'][k])}")
    d = r["max_abs_diff"]
    click.echo(
        "max |difference|: "
        + ", ".join(f"{k} {v:.4f}" for k, v in d.items())
        + "; eigenvector angles (deg): "
        + " ".join(f"{a:.3f}" for a in r["eigvec_angle_deg"])
    )


def _numbers(values) -> str:
    return " ".join(f"{x:9.4f}" for x in values)


@main.command()
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
    )


@main.command()
@click.argument("data", type=click.Path())
@click.option(
    "--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run folder (checkpoints, metrics)."
)
@config_options(TrainConfig, skip=("data", "run_dir"))
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in RUN_DIR from its last checkpoint (mid-epoch after SIGTERM), with the run's "
    f"settings: only {may_change()} may differ.",
)
@click.option("--progress/--no-progress", default=True)
@user_errors
def train(resume, progress, **options) -> None:
    """Train the two-tower AlexNet on prepared DATA (section 5 of the paper by default).

    Data-parallel over GPUs and machines: torchrun --nproc-per-node G -m imgprep.cli.main train ...
    """
    from imgprep.trainer.train import train as run

    run(TrainConfig(**options), resume=resume, progress=progress, log=click.echo)


@main.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--data", type=click.Path(), required=True, help="Prepared dataset with a val split.")
@config_options(EvalConfig, skip=("run_dir", "data"))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def eval_(as_json, **options) -> None:
    """Top-1 and top-5 error of the model in RUN_DIR on the validation split of DATA."""
    from imgprep.trainer.runtime import evaluate_run

    r = evaluate_run(EvalConfig(**options))
    if as_json:
        click.echo(json.dumps(r))
        return
    view = "10-view" if r["ten_crop"] else "centre-crop"
    click.echo(
        f"{view} top-1 error {r['top1_error']:.2%}, top-5 error {r['top5_error']:.2%} "
        f"on {r['images']:,} images (epoch {r['epoch']})"
    )


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@user_errors
def plot(run_dirs, out) -> None:
    """Training and validation top-1 error and loss of RUN_DIRS against epoch, overlaid, with the
    learning-rate drops marked."""
    from imgprep.trainer.plot import plot_runs

    drawn = plot_runs(list(run_dirs), out)
    click.echo(f"wrote {out}: " + ", ".join(f"{k} ({n} epochs)" for k, n in drawn.items()))


@main.command()
@config_options(DemoConfig)
@user_errors
def demo(**options) -> None:
    """Synthesize a small dataset, prepare it, train a reduced AlexNet on it, evaluate, report."""
    from imgprep.trainer.demo import run_demo

    run_demo(DemoConfig(**options), log=click.echo)


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


@main.group()
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


@main.command()
@click.argument("name", type=click.Choice(list(EXPERIMENT_NAMES)))
@click.argument("data", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Results folder (runs are kept there).")
@config_options(ExperimentConfig, skip=("data", "out"))
@user_errors
def experiment(name, **options) -> None:
    """Run one of the reviewer's questions as a series of trainings: results.csv/.md and chart.png in OUT.

    \b
    ablate-conv     remove each conv layer in turn
    dropout         a sweep of dropout rates
    batch-momentum  batch size x momentum (lr = lr * batch / 128, the linear scaling rule)
    activation      ReLU vs tanh: epochs and wall time to a target training error
    """
    from imgprep.trainer.experiments import run_experiment

    run_experiment(name, ExperimentConfig(**options), log=click.echo)
    click.echo(f"results -> {options['out']}/results.csv, results.md, chart.png")


if __name__ == "__main__":
    main()
