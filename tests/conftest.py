"""Shared fixtures: small synthetic datasets made in tmp dirs, never downloaded."""

from __future__ import annotations

import signal

import pytest

# A suite started in the background by a shell without job control inherits SIGINT ignored (and
# Python then leaves it so); the Ctrl-C tests need Python's default handler, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def synth_src(tmp_path_factory):
    """4 classes x 6 train + 2 val synthetic images (small sides for speed)."""
    from imgprep.synth import SynthConfig, synthesize

    root = str(tmp_path_factory.mktemp("synth") / "src")
    synthesize(SynthConfig(root, classes=4, per_class=6, val_per_class=2, seed=1, min_side=60, max_side=140))
    return root


def _prepare(src: str, factory, size: int, shard_size: int, seed: int) -> str:
    from imgprep.prepare import PrepareConfig, prepare

    out = str(factory.mktemp(f"prepared{size}") / "out")
    cfg = PrepareConfig(src, out, size=size, shard_size=shard_size, seed=seed, workers=2)
    prepare(cfg, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def prepared128(synth_src, tmp_path_factory):
    """`synth_src` stored at 128 px (crops of 112), shards of 8: small enough to train on in a test."""
    return _prepare(synth_src, tmp_path_factory, 128, 8, 1)


@pytest.fixture(scope="session")
def prepared256(synth_src, tmp_path_factory):
    """`synth_src` stored at 256 px (crops of 224: the paper's shapes), shards of 8."""
    return _prepare(synth_src, tmp_path_factory, 256, 8, 1)


@pytest.fixture(scope="session")
def prepared(synth_src, tmp_path_factory):
    """`synth_src` prepared at size 64, shards of 5, 2 workers."""
    return _prepare(synth_src, tmp_path_factory, 64, 5, 3)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """SeaweedFS (`weed mini`) on 127.0.0.1 for the whole session; skipped, with the reason, where
    it cannot start."""
    from servers import SeaweedFS

    sw = SeaweedFS(str(tmp_path_factory.mktemp("seaweedfs")))
    if not sw.start():
        pytest.skip(f"no S3 server: {sw.why_not}")
    yield sw
    sw.stop()


@pytest.fixture
def aws_env(request, monkeypatch):
    """No AWS setting of the machine's reaches the test; where it uses `s3`, that server's do."""
    import os

    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CACHE_HOME", str(request.getfixturevalue("tmp_path") / "xdg-cache"))
    if "s3" in request.fixturenames:
        for k, v in request.getfixturevalue("s3").env().items():
            monkeypatch.setenv(k, v)
