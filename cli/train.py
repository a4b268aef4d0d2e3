"""`imgprep train`, `eval`, `plot`, `demo` and `experiment`: the trainer's commands."""

from __future__ import annotations

import json

import click

from imgprep.trainer.config import EXPERIMENT_NAMES, DemoConfig, EvalConfig, ExperimentConfig, TrainConfig, may_change

from .options import config_options, user_errors


@click.command()
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


@click.command("eval")
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


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@user_errors
def plot(run_dirs, out) -> None:
    """Training and validation top-1 error and loss of RUN_DIRS against epoch, overlaid, with the
    learning-rate drops marked."""
    from imgprep.trainer.plot import plot_runs

    drawn = plot_runs(list(run_dirs), out)
    click.echo(f"wrote {out}: " + ", ".join(f"{k} ({n} epochs)" for k, n in drawn.items()))


@click.command()
@config_options(DemoConfig)
@user_errors
def demo(**options) -> None:
    """Synthesize a small dataset, prepare it, train a reduced AlexNet on it, evaluate, report."""
    from imgprep.trainer.demo import run_demo

    run_demo(DemoConfig(**options), log=click.echo)


@click.command()
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
