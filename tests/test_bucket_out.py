"""`prepare SRC s3://...`: OUT in a bucket (the real S3 server of the test suite)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import cli_argv, slow_reads_env, tree
from imgprep.errors import ImgprepError
from imgprep.prepare import PrepareConfig, prepare
from imgprep.remote import Store

QUIET = dict(progress=False, log=lambda s: None)
SETTINGS = dict(size=48, shard_size=3, seed=5)


@pytest.fixture(autouse=True)
def _aws(aws_env):
    pass


def bucket_tree(url: str) -> dict[str, bytes]:
    st = Store(url)
    return {key: st.get(key) for key, _ in st.list("")}


@pytest.fixture(scope="module")
def local(synth_src, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("local") / "out")
    prepare(PrepareConfig(synth_src, out, workers=2, **SETTINGS), **QUIET)
    return out


def test_prepare_into_a_bucket_writes_the_objects_of_a_local_run_byte_for_byte(synth_src, local, s3):
    url = "s3://imgprep-test/prepared-a"
    s = prepare(PrepareConfig(synth_src, url, workers=2, **SETTINGS), **QUIET)
    assert s["images"] == 32
    assert bucket_tree(url) == tree(local)  # shards, index files, statistics, rejects, manifest; nothing else
    again = prepare(PrepareConfig(synth_src, url, workers=2, **SETTINGS), **QUIET)
    assert again["already_complete"]
    with pytest.raises(ImgprepError, match="prepared with other settings.*--seed was 5, now 6"):
        prepare(PrepareConfig(synth_src, url, workers=1, **{**SETTINGS, "seed": 6}), **QUIET)


def test_a_prefix_holding_something_else_is_refused(synth_src, s3):
    Store("s3://imgprep-test/other").put("notes.txt", b"mine")
    with pytest.raises(ImgprepError, match="other: not empty and not an imgprep dataset"):
        prepare(PrepareConfig(synth_src, "s3://imgprep-test/other", workers=1, **SETTINGS), **QUIET)


def test_an_interrupted_run_resumes_on_another_machine_byte_identical(synth_src, local, s3, tmp_path):
    """Ctrl-C mid-run; the local staging folder is then deleted (another machine, no shared disk):
    the rerun takes the state from the bucket, keeps the finished shards (checked there) and ends
    with the objects of an uninterrupted run."""
    url = "s3://imgprep-test/resumed"
    env = {**slow_reads_env(tmp_path / "slow", delay=0.1), **s3.env(), "XDG_CACHE_HOME": str(tmp_path / "machine-a")}
    args = ["prepare", synth_src, url, "--size", "48", "--shard-size", "3", "--seed", "5", "--workers", "2"]
    p = subprocess.Popen(cli_argv(*args, "--no-progress"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and len([k for k, _ in Store(url).list("train/") if k.endswith(".tar")]) < 3:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "interrupted;" in err, err
    assert "manifest.json" not in dict(Store(url).list(""))
    shutil.rmtree(tmp_path / "machine-a")
    env_b = {**env, "XDG_CACHE_HOME": str(tmp_path / "machine-b"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cli_argv(*args, "--no-progress"), env=env_b, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    done = int(r.stdout.split("resuming: ")[1].split(" of ")[0])
    assert done >= 3
    assert bucket_tree(url) == tree(local)


def test_a_second_run_that_takes_over_the_prefix_stops_the_first_before_its_manifest(synth_src, s3, monkeypatch):
    from imgprep import bucket_out

    url = "s3://imgprep-test/contested"
    commit = bucket_out.BucketOut.commit

    def taken_over(self):
        Store(url).put(bucket_out.RUN_ID, b"someone-else")  # another run claimed the prefix meanwhile
        commit(self)

    monkeypatch.setattr(bucket_out.BucketOut, "commit", taken_over)
    with pytest.raises(ImgprepError, match="another `imgprep prepare` run has taken over this prefix"):
        prepare(PrepareConfig(synth_src, url, workers=1, **SETTINGS), **QUIET)
    assert "manifest.json" not in dict(Store(url).list(""))
