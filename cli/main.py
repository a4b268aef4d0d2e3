"""`imgprep` console script: one click group, one thin command per library entry point.

Heavy libraries (cv2, torch, DALI) are imported inside the commands that use them, so
`imgprep --help` and `imgprep prepare` start fast.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from imgprep.errors import ImgprepError


def user_errors(fn):
    """Turn library errors into a one-line message and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImgprepError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def workers_option(fn):
    return click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                        help="Worker processes (0: all cores).")(fn)


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
@click.option("--classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--per-class", type=click.IntRange(min=1), default=50, show_default=True,
              help="Training images per class.")
@click.option("--val-per-class", type=click.IntRange(min=0), default=None,
              help="Validation images per class [default: per-class / 5, at least 1].")
@click.option("--seed", type=int, default=0, show_default=True)
@workers_option
@user_errors
def synth(out, classes, per_class, val_per_class, seed, workers) -> None:
    """Write a small synthetic class-folder dataset to OUT (train/ and val/)."""
    from imgprep._mp import resolve_workers
    from imgprep.synth import SynthConfig, synthesize

    vpc = max(1, per_class // 5) if val_per_class is None else val_per_class
    r = synthesize(SynthConfig(out, classes, per_class, vpc, seed), workers=resolve_workers(workers))
    click.echo(f"wrote {r['train']} train and {r['val']} val images of {r['classes']} classes to {out}")


@main.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True,
              help="Split of SRC when it is a plain folder of class folders.")
@click.option("--layout", type=click.Choice(["auto", "folders", "ilsvrc", "kaggle"]), default="auto",
              show_default=True, help="Source layout; auto detects ILSVRC2012 archives, Kaggle, class folders.")
@click.option("--val-labels", type=click.Path(dir_okay=False), default=None,
              help="Labels of a flat validation folder (or val tar): one WNID per line in file-name "
                   "order, or CSV file,wnid.")
@click.option("--size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Shorter side after resizing, and side of the centre crop.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per shard.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the global shuffle.")
@workers_option
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run the units (one per shard) in a local process pool or as Ray tasks.")
@click.option("--ray-address", default=None, help="Ray cluster to use (e.g. auto, ray://head:10001); "
                                                  "default: start a local Ray instance with --workers CPUs.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def prepare(src, out, split, layout, val_labels, size, quality, shard_size, seed, workers, executor, ray_address,
            progress) -> None:
    """Turn the images in SRC into shuffled WebDataset shards, statistics and a manifest in OUT.

    SRC: class folders (train/<class>/, val/<class>/), the ILSVRC2012 archives with the devkit,
    or the Kaggle download. Rerun the same command to resume after an interruption.
    """
    from imgprep.prepare import PrepareConfig, prepare as run

    cfg = PrepareConfig(src=src, out=out, split=split, layout=layout, val_labels=val_labels, size=size,
                        quality=quality, shard_size=shard_size, seed=seed, workers=workers, executor=executor,
                        ray_address=ray_address)
    run(cfg, progress=progress, log=click.echo)


@main.command()
@click.argument("out", type=click.Path())
@workers_option
@user_errors
def verify(out, workers) -> None:
    """Check every shard of OUT against its manifest; exit 1 on any mismatch."""
    from imgprep._mp import resolve_workers
    from imgprep.verify import verify as run

    r = run(out, resolve_workers(workers))
    for p in r["problems"][:50]:
        click.echo(p, err=True)
    if r["problems"]:
        more = len(r["problems"]) - 50
        raise click.ClickException(f"{len(r['problems'])} problems in {out}" + (f" ({more} not shown)" if more > 0 else ""))
    click.echo(f"ok: {r['shards']} shards, {r['samples']:,} samples match the manifest")


@main.command()
@click.argument("out", type=click.Path())
@workers_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def stats(out, workers, as_json) -> None:
    """Recompute the training statistics of OUT from its shards and compare with the stored ones."""
    from imgprep._mp import resolve_workers
    from imgprep.verify import recompute_stats

    r = recompute_stats(out, resolve_workers(workers))
    if as_json:
        click.echo(json.dumps(r))
        return
    fmt = lambda v: " ".join(f"{x:9.4f}" for x in v)  # noqa: E731
    click.echo(f"{r['images']:,} training images (decoded from the shards)")
    for k in ("mean", "std", "eigval"):
        click.echo(f"{k:7s} stored     {fmt(r['stored'][k])}\n{'':7s} recomputed {fmt(r['recomputed'][k])}")
    d = r["max_abs_diff"]
    click.echo("max |difference|: " + ", ".join(f"{k} {v:.4f}" for k, v in d.items())
               + "; eigenvector angles (deg): " + " ".join(f"{a:.3f}" for a in r["eigvec_angle_deg"]))


@main.command()
@click.argument("data", type=click.Path())
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--mode", type=click.Choice(["train", "eval", "ten_crop"]), default="train", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after N batches (overrides --epochs).")
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@workers_option
@click.option("--lighting-std", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--normalize", type=click.Choice(["mean_image", "mean_image_std", "channel", "none"]),
              default="mean_image", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def load(data, split, batch_size, mode, epochs, steps, backend, device, workers, lighting_std, normalize, seed,
         as_json) -> None:
    """Iterate the loader over DATA and report images/s and batch latency."""
    from imgprep.loaders import make_loader, measure

    loader = make_loader(data, split, batch_size, mode, backend=backend, device=device, workers=workers,
                         lighting_std=lighting_std, normalize=normalize, seed=seed)
    r = measure(loader, epochs=epochs, steps=steps)
    if as_json:
        click.echo(json.dumps(r))
        return
    lat = r["batch_latency_ms"] or {}
    click.echo(f"{r['backend']} on {r['device']}: {r['batches']} batches, {r['images']:,} images, "
               f"{r['images_per_second'] or 0:,.0f} img/s, batch latency median {lat.get('median', 0):.1f} ms "
               f"(p90 {lat.get('p90', 0):.1f} ms)")


@main.command()
@click.argument("data", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run folder (checkpoints, metrics).")
@click.option("--epochs", type=click.IntRange(min=1), default=90, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Global batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True)
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--lr-patience", type=click.IntRange(min=0), default=1, show_default=True,
              help="Epochs without a better validation error before the lr is divided by 10.")
@click.option("--init", type=click.Choice(["paper", "kaiming"]), default="paper", show_default=True)
@click.option("--width-mult", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True)
@click.option("--activation", type=click.Choice(["relu", "tanh"]), default="relu", show_default=True)
@click.option("--remove", type=click.Choice(["conv1", "conv2", "conv3", "conv4", "conv5"]), multiple=True,
              help="Leave out a conv layer (repeatable).")
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--devices", default="auto", show_default=True,
              help="auto, cpu, cuda:0, or cuda:0,cuda:1 (tower A, tower B: the paper's two-GPU split).")
@workers_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lighting-std", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(min=0), default=0, help="Cap batches per epoch (0: all).")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last checkpoint.")
@click.option("--progress/--no-progress", default=True)
@user_errors
def train(data, run_dir, epochs, batch_size, lr, momentum, weight_decay, lr_patience, init, width_mult, dropout,
          activation, remove, backend, devices, workers, seed, lighting_std, steps_per_epoch, resume, progress) -> None:
    """Train the two-tower AlexNet on prepared DATA (section 5 of the paper by default).

    Data-parallel over GPUs and machines: torchrun --nproc-per-node G -m imgprep.cli.main train ...
    """
    from imgprep.trainer.train import TrainConfig, train as run

    cfg = TrainConfig(data=data, run_dir=run_dir, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, lr_patience=lr_patience, init=init, width_mult=width_mult,
                      dropout=dropout, activation=activation, remove=tuple(remove), backend=backend, devices=devices,
                      workers=workers, seed=seed, lighting_std=lighting_std, steps_per_epoch=steps_per_epoch)
    run(cfg, resume=resume, progress=progress, log=click.echo)


@main.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--data", type=click.Path(), required=True, help="Prepared dataset with a val split.")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the paper's ten views.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--devices", default="auto", show_default=True)
@workers_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def eval_(run_dir, data, ten_crop, batch_size, backend, devices, workers, as_json) -> None:
    """Top-1 and top-5 error of the model in RUN_DIR on the validation split of DATA."""
    from imgprep.trainer.evaluate import evaluate_run

    r = evaluate_run(run_dir, data, ten_crop, backend, devices, batch_size, workers)
    if as_json:
        click.echo(json.dumps(r))
        return
    view = "10-view" if ten_crop else "centre-crop"
    click.echo(f"{view} top-1 error {r['top1_error']:.2%}, top-5 error {r['top5_error']:.2%} "
               f"on {r['images']:,} images (epoch {r['epoch']})")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Working folder (replaced).")
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--per-class", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@workers_option
@user_errors
def demo(out, classes, per_class, epochs, backend, seed, workers) -> None:
    """Synthesize a small dataset, prepare it, train a reduced AlexNet on it, evaluate, report."""
    from imgprep.trainer.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, classes=classes, per_class=per_class, val_per_class=max(1, per_class // 5),
                        epochs=epochs, seed=seed, workers=workers, backend=backend), log=click.echo)


def _int_list(ctx, param, value):
    if value is None:
        return ()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated whole numbers, e.g. 1,2,4") from None


def _float_list(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers, e.g. 0,0.5,0.9") from None


def bench_outputs(fn):
    fn = click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
                      help="Runs per figure (median and spread reported).")(fn)
    fn = click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")(fn)
    fn = click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart.")(fn)
    return fn


def _report(result: dict, columns: list[str], label: str, series: dict[str, tuple[str, str, str]], title: str,
            json_out, plot) -> None:
    from imgprep.report import bar_chart, text_table, write_json

    rows = result["results"]
    click.echo(text_table(rows, columns))
    if json_out:
        write_json(json_out, result)
        click.echo(f"results -> {json_out}")
    if plot:
        labels = [" ".join(str(r[k]) for k in label.split("+")) for r in rows]
        bar_chart(plot, labels, {name: [r[m] for r in rows] for name, (m, _, _) in series.items()}, "images/s", title,
                  errors={name: ([r[lo] for r in rows], [r[hi] for r in rows]) for name, (_, lo, hi) in series.items()})
        click.echo(f"chart -> {plot}")


@main.group()
def bench() -> None:
    """Throughput benchmarks against the baselines (median and spread, JSON, PNG, table)."""


@bench.command("prepare")
@click.argument("src", type=click.Path())
@click.option("--images", type=click.IntRange(min=1), default=1000, show_default=True, help="Images taken from SRC.")
@click.option("--workers", callback=_int_list, default=None, help="Worker counts, e.g. 1,2,4 [default: 1, 2, 4 ... cores].")
@bench_outputs
@user_errors
def bench_prepare(src, images, workers, repeats, json_out, plot) -> None:
    """Images/s of `prepare` for each worker count against the naive Pillow script."""
    from imgprep.bench import PrepareBenchConfig, bench_prepare as run

    r = run(PrepareBenchConfig(src, images, workers, repeats), log=click.echo)
    _report(r, ["variant", "images_per_second", "min", "max", "vs_naive"], "variant",
            {"images/s": ("images_per_second", "min", "max")}, f"prepare, {r['images']} images", json_out, plot)


@bench.command("load")
@click.argument("data", type=click.Path())
@click.option("--batch-sizes", callback=_int_list, default="64,256", show_default=True)
@click.option("--workers", callback=_int_list, default=None, help="Worker counts [default: 1 and all cores].")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@bench_outputs
@user_errors
def bench_load(data, batch_sizes, workers, steps, device, repeats, json_out, plot) -> None:
    """Images/s of the DALI pipeline and the torch fallback against a torchvision-style baseline."""
    from imgprep.bench import LoadBenchConfig, bench_load as run

    r = run(LoadBenchConfig(data, batch_sizes, workers, steps, repeats, device), log=click.echo)
    _report(r, ["loader", "batch_size", "workers", "images_per_second", "min", "max", "vs_baseline"],
            "loader+batch_size+workers", {"images/s": ("images_per_second", "min", "max")}, "loaders, train mode",
            json_out, plot)


@bench.command("train")
@click.argument("data", type=click.Path())
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--width-mult", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--placements", default=None, help="Placements separated by ';', e.g. 'cpu;cuda:0;cuda:0,cuda:1' "
                                                 "[default: every available].")
@workers_option
@bench_outputs
@user_errors
def bench_train(data, batch_size, steps, width_mult, backend, placements, workers, repeats, json_out, plot) -> None:
    """Training images/s of AlexNet per placement, beside the loader's own rate."""
    from imgprep.trainer.bench import TrainBenchConfig, bench_train as run

    pl = tuple(p.strip() for p in placements.split(";") if p.strip()) if placements else ()
    r = run(TrainBenchConfig(data, batch_size, steps, repeats, width_mult, backend, workers, pl), log=click.echo)
    _report(r, ["placement", "model_synthetic", "training_with_loader", "loader_only", "limited_by"], "placement",
            {"model (synthetic input)": ("model_synthetic", "model_synthetic_min", "model_synthetic_max"),
             "training with loader": ("training_with_loader", "training_with_loader_min", "training_with_loader_max"),
             "loader alone": ("loader_only", "loader_only_min", "loader_only_max")},
            f"AlexNet x{width_mult}, batch {batch_size}", json_out, plot)


@main.command()
@click.argument("name", type=click.Choice(["ablate-conv", "dropout", "batch-momentum", "activation"]))
@click.argument("data", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Results folder (runs are kept there).")
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--width-mult", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True)
@click.option("--full", is_flag=True, help="The paper's recipe: width 1, 90 epochs, batch 128, paper init.")
@click.option("--dropouts", callback=_float_list, default=None, help="dropout: rates [default: 0,0.25,0.5,0.75].")
@click.option("--batch-sizes", callback=_int_list, default=None, help="batch-momentum: batch sizes [default: 32,64,128].")
@click.option("--momenta", callback=_float_list, default=None, help="batch-momentum: momenta [default: 0,0.5,0.9].")
@click.option("--target-error", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="activation: training top-1 error to reach.")
@click.option("--steps-per-epoch", type=click.IntRange(min=0), default=0, help="Cap batches per epoch (0: all).")
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@workers_option
@user_errors
def experiment(name, data, out, epochs, width_mult, batch_size, lr, full, dropouts, batch_sizes, momenta, target_error,
               steps_per_epoch, backend, seed, workers) -> None:
    """Run one of the reviewer's questions as a series of trainings: results.csv/.md and chart.png in OUT.

    \b
    ablate-conv     remove each conv layer in turn
    dropout         a sweep of dropout rates
    batch-momentum  batch size x momentum (lr = lr * batch / 128, the linear scaling rule)
    activation      ReLU vs tanh: epochs and wall time to a target training error
    """
    from imgprep.trainer.experiments import ExperimentConfig, run_experiment

    kw = {k: v for k, v in dict(dropouts=dropouts, batch_sizes=batch_sizes or None, momenta=momenta).items() if v}
    cfg = ExperimentConfig(data, out, epochs=epochs, width_mult=width_mult, batch_size=batch_size, lr=lr, seed=seed,
                           backend=backend, workers=workers, steps_per_epoch=steps_per_epoch, full=full,
                           target_error=target_error, **kw)
    run_experiment(name, cfg, log=click.echo)
    click.echo(f"results -> {out}/results.csv, results.md, chart.png")


if __name__ == "__main__":
    main()
