"""`imgprep prepare`. A module of its own so that its start imports click and `imgprep.prepare`
only: nothing of the loader, the trainer or the object-store client (a bucket OUT imports that
when it is used); with several workers, the start is paid whole by every run."""

from __future__ import annotations

import click

from imgprep.prepare import PrepareConfig

from .options import config_options, user_errors


@click.command()
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
