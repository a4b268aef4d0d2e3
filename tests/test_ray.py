"""`prepare --executor ray` on a local Ray instance with 2 CPUs: same bytes as the local executor,
and a lost task is retried."""

import os

import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

import crashing  # noqa: E402
from helpers import tree  # noqa: E402
from imgprep.prepare import PrepareConfig, prepare  # noqa: E402

cloudpickle.register_pickle_by_value(crashing)  # Ray workers do not see tests/ on their path
QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_executor_output_identical_to_local(synth_src, prepared, tmp_path, ray_local):
    out = str(tmp_path / "ray")
    s = prepare(PrepareConfig(synth_src, out, size=64, shard_size=5, seed=3, workers=2, executor="ray"), **QUIET)
    assert s["images"] == 32
    assert tree(out) == tree(prepared)


def test_lost_ray_task_is_retried(synth_src, prepared, tmp_path, ray_local, monkeypatch):
    import imgprep.prepare

    cls = sorted(os.listdir(os.path.join(synth_src, "train")))[2]
    victim = f"train/{cls}/{sorted(os.listdir(os.path.join(synth_src, 'train', cls)))[0]}"
    marker = str(tmp_path / "died")
    out = str(tmp_path / "out")
    discover = imgprep.prepare.discover

    def with_crashing_source(*args):
        index = discover(*args)
        index.source = crashing.CrashingSource(index.source.root, index.source.archives, victim, marker)
        return index

    monkeypatch.setattr(imgprep.prepare, "discover", with_crashing_source)
    prepare(PrepareConfig(synth_src, out, size=64, shard_size=5, seed=3, workers=2, executor="ray"), **QUIET)
    assert os.path.exists(marker)  # the worker process running that task died
    assert tree(out) == tree(prepared)


def test_ray_tasks_write_their_shards_straight_to_a_bucket(synth_src, prepared, s3, aws_env, ray_local):
    """OUT in a bucket: every Ray task puts its own shard (from its own temporary folder, not the
    driver's) and the objects equal the local executor's files."""
    from imgprep.remote import Store

    url = "s3://imgprep-test/ray-out"
    cfg = PrepareConfig(synth_src, url, size=64, shard_size=5, seed=3, workers=2, executor="ray")
    s = prepare(cfg, **QUIET)
    assert s["images"] == 32
    st = Store(url)
    assert {k: st.get(k) for k, _ in st.list("")} == tree(prepared)
