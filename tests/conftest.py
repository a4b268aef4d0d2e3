"""Shared fixtures: small synthetic datasets made in tmp dirs, never downloaded."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_src(tmp_path_factory):
    """4 classes x 6 train + 2 val synthetic images (small sides for speed)."""
    from imgprep.synth import SynthConfig, synthesize

    root = str(tmp_path_factory.mktemp("synth") / "src")
    synthesize(SynthConfig(root, classes=4, per_class=6, val_per_class=2, seed=1, min_side=60, max_side=140))
    return root


@pytest.fixture(scope="session")
def prepared128(synth_src, tmp_path_factory):
    """`synth_src` stored at 128 px (crops of 112), shards of 8: small enough to train on in a test."""
    from imgprep.prepare import PrepareConfig, prepare

    out = str(tmp_path_factory.mktemp("prepared128") / "out")
    prepare(
        PrepareConfig(synth_src, out, size=128, shard_size=8, seed=1, workers=2), progress=False, log=lambda s: None
    )
    return out


@pytest.fixture(scope="session")
def prepared(synth_src, tmp_path_factory):
    """`synth_src` prepared at size 64, shards of 5, 2 workers."""
    from imgprep.prepare import PrepareConfig, prepare

    out = str(tmp_path_factory.mktemp("prepared") / "out")
    prepare(PrepareConfig(synth_src, out, size=64, shard_size=5, seed=3, workers=2), progress=False, log=lambda s: None)
    return out
