"""`imgprep.dataset`: a prepared dataset opened once; its manifest and statistics read once a process."""

import pytest

from imgprep import dataset
from imgprep.loaders import make_loader


@pytest.fixture
def reads(monkeypatch):
    """Counts of the two readers of a dataset's files."""
    counts = {"manifest": 0, "stats": 0}
    real_manifest, real_stats = dataset.read_manifest, dataset.load_stats

    def manifest(*a, **kw):
        counts["manifest"] += 1
        return real_manifest(*a, **kw)

    def stats(*a, **kw):
        counts["stats"] += 1
        return real_stats(*a, **kw)

    monkeypatch.setattr(dataset, "read_manifest", manifest)
    monkeypatch.setattr(dataset, "load_stats", stats)
    return counts


def test_a_train_setup_reads_the_manifest_and_statistics_once(prepared128, tmp_path, reads):
    from imgprep.trainer.config import TrainConfig
    from imgprep.trainer.train import setup

    run = setup(
        TrainConfig(prepared128, str(tmp_path / "r"), width_mult=0.125, init="kaiming", batch_size=8, workers=1)
    )
    try:
        assert run.val_loader is not None
    finally:
        run.metrics.close()
        run.lock.release()
    assert reads == {"manifest": 1, "stats": 1}


def test_an_opened_dataset_serves_every_loader_and_batch_bound(prepared, reads):
    ds = dataset.open_dataset(prepared)
    assert dataset.open_dataset(ds) is ds
    a = make_loader(ds, "train", 5, "train", workers=1)
    b = make_loader(ds, "val", ds.batch_within("val", 64), "eval", workers=1)
    assert (a.info.total, b.cfg.batch_size) == (24, 8) and a.cfg.root == prepared
    assert reads == {"manifest": 1, "stats": 1}
    make_loader(prepared, "train", 5, "train", workers=1)  # a path: opened anew
    assert reads == {"manifest": 2, "stats": 2}
