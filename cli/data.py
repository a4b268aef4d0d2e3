"""`imgprep synth`, `upload`, `verify` and `stats`: the commands around a prepared dataset."""

from __future__ import annotations

import json

import click

from imgprep.synth import SynthConfig
from imgprep.upload import UploadConfig

from .options import config_options, user_errors, workers_option


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
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
