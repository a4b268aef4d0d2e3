"""`prepare SRC s3://...`: OUT in a bucket (the real S3 server of the test suite)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from helpers import bucket_tree, cli_argv, slow_reads_env, tree
from imgprep import bucket_out
from imgprep.errors import ImgprepError
from imgprep.prepare import PrepareConfig, prepare
from imgprep.remote import RemoteError, Store

QUIET = dict(progress=False, log=lambda s: None)
SETTINGS = dict(size=48, shard_size=3, seed=5)


@pytest.fixture(autouse=True)
def _aws(aws_env):
    pass


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


def test_a_shard_put_in_parts_is_kept_by_a_resume_by_its_multipart_etag(s3, tmp_path, monkeypatch):
    """A shard over MULTIPART_PART is put in parts (S3's smallest, 5 MiB, here); its record keeps the
    ETag the store gives it, which the resume's check accepts; another ETag or size is redone."""
    from imgprep import remote

    monkeypatch.setattr(remote, "MULTIPART_PART", 5 << 20)
    tmp = tmp_path / "unit"
    (tmp / "train").mkdir(parents=True)
    (tmp / "train" / "train-000000.tar").write_bytes(os.urandom((5 << 20) + 4096))
    (tmp / "train" / "train-000000.idx").write_bytes(b"0 0 0\n")
    url = "s3://imgprep-test/multipart-shard"
    etag = bucket_out.upload_shard(url, str(tmp), "train/train-000000.tar", "train/train-000000.idx", {})
    assert etag.endswith("-2")
    rec = {"split": "train", "md5": etag, "shard": {"path": "train/train-000000.tar", "bytes": (5 << 20) + 4096}}
    out = bucket_out.BucketOut(url)
    assert out.verify_records({"u": rec}) == set()
    assert out.verify_records({"u": {**rec, "md5": etag.replace("-2", "-3")}}) == {"train"}
    assert out.verify_records({"u": {**rec, "shard": {**rec["shard"], "bytes": 5}}}) == {"train"}


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
    assert done >= 2  # 3 shards were in the bucket; the last one's record may not have reached the driver
    assert bucket_tree(url) == tree(local)


def test_a_second_run_that_takes_over_the_prefix_stops_the_first_before_its_manifest(synth_src, s3, monkeypatch):
    url = "s3://imgprep-test/contested"
    commit = bucket_out.BucketOut.commit

    def taken_over(self):
        Store(url).put(bucket_out.LOCK, b'{"run": "someone-else"}')  # a store without conditional writes
        commit(self)

    monkeypatch.setattr(bucket_out.BucketOut, "commit", taken_over)
    with pytest.raises(ImgprepError, match="another `imgprep prepare` run has taken over this prefix"):
        prepare(PrepareConfig(synth_src, url, workers=1, **SETTINGS), **QUIET)
    assert "manifest.json" not in dict(Store(url).list(""))


# -- one writer per prefix, and faults -------------------------------------------------------------


def _foreign_lock(url: str, n: int = 0) -> None:
    body = json.dumps({"run": "f" * 32, "host": "node-7", "stage": "/elsewhere", "pid": 4242, "renewal": n})
    Store(url).put(bucket_out.LOCK, body.encode())


def test_a_live_run_holding_the_prefix_refuses_a_second_one_in_one_line(synth_src, s3, monkeypatch):
    """The lock is renewed while the second run waits (as a live run renews it): refused, and
    nothing of the second run is written."""
    url = "s3://imgprep-test/locked-live"
    _foreign_lock(url)
    monkeypatch.setattr(bucket_out, "LOCK_WAIT_S", 1.0)
    stop = threading.Event()

    def renewing():
        n = 0
        while not stop.wait(0.2):
            n += 1
            _foreign_lock(url, n)

    t = threading.Thread(target=renewing)
    t.start()
    try:
        with pytest.raises(
            ImgprepError, match=r"another `imgprep prepare` is writing this prefix \(host node-7, pid 4242\)"
        ):
            prepare(PrepareConfig(synth_src, url, workers=1, **SETTINGS), **QUIET)
    finally:
        stop.set()
        t.join()
    assert set(dict(Store(url).list(""))) == {bucket_out.LOCK}


def test_a_dead_runs_lock_is_taken_over_after_the_wait(synth_src, local, s3, monkeypatch):
    url = "s3://imgprep-test/locked-dead"
    _foreign_lock(url)
    monkeypatch.setattr(bucket_out, "LOCK_WAIT_S", 0.5)
    lines = []
    prepare(PrepareConfig(synth_src, url, workers=2, **SETTINGS), progress=False, log=lines.append)
    assert any("waiting 0 s to see whether it is still alive" in x or "waiting 1 s" in x for x in lines), lines
    assert any("taking over from an interrupted run (run ffffffff on node-7)" in x for x in lines), lines
    assert bucket_tree(url) == tree(local)  # the lock gone with the run


def test_conditional_writes_let_one_of_two_contenders_win(s3):
    st = Store("s3://imgprep-test/contenders")
    first = st.put_if("lock", b"a")
    assert first and st.put_if("lock", b"b") is None  # create-only: the second creator loses
    assert st.put_if("lock", b"c", if_match='"0000"') is None  # a stale ETag loses
    assert st.put_if("lock", b"d", if_match=first) and st.get("lock") == b"d"


def _run_until_shards(args: list[str], env: dict, url: str, n: int) -> subprocess.Popen:
    p = subprocess.Popen(cli_argv(*args, "--no-progress"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and _shards(url) < n:
        time.sleep(0.05)
    return p


def _shards(url: str) -> int:
    try:
        return len([k for k, _ in Store(url).list("train/") if k.endswith(".tar")])
    except RemoteError:  # no bucket yet
        return 0


def test_a_killed_driver_is_resumed_at_once_on_its_machine_byte_identical(synth_src, local, s3, tmp_path):
    """SIGKILL to the driver and its workers (no clean-up at all: the lock stays): the same command
    on the same machine takes its own dead run's lock over without waiting and finishes."""
    url = "s3://imgprep-test/killed"
    env = {**slow_reads_env(tmp_path / "slow", delay=0.1), **s3.env(), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    args = ["prepare", synth_src, url, "--size", "48", "--shard-size", "3", "--seed", "5", "--workers", "2"]
    p = _run_until_shards(args, env, url, 3)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert bucket_out.LOCK in dict(Store(url).list("")) and "manifest.json" not in dict(Store(url).list(""))
    r = subprocess.run(cli_argv(*args, "--no-progress"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "taking over from an interrupted run" in r.stdout and "waiting" not in r.stdout
    assert bucket_tree(url) == tree(local)


def test_a_killed_worker_and_a_restarted_server_still_end_byte_identical(synth_src, local, tmp_path, monkeypatch):
    """Mid-run, a pool worker is SIGKILLed (its unit is redone) and the S3 server is stopped and
    started again on its ports (requests are retried): the run, or else the same command once more,
    ends with the objects of an uninterrupted run; a failure is one line naming the object."""
    from servers import SeaweedFS

    sw = SeaweedFS(str(tmp_path / "sw"))
    if not sw.start():
        pytest.skip(f"no S3 server: {sw.why_not}")
    try:
        url = "s3://imgprep-test/faults"
        env = {**slow_reads_env(tmp_path / "slow", delay=0.1), **sw.env(), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
        for k, v in sw.env().items():
            monkeypatch.setenv(k, v)
        args = ["prepare", synth_src, url, "--size", "48", "--shard-size", "3", "--seed", "5", "--workers", "2"]
        p = _run_until_shards(args, env, url, 2)
        kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
        os.kill(int(kids[-1]), signal.SIGKILL)  # the pool's workers are the driver's children
        sw.restart()
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:  # the server was away longer than the retries: one line, then resumed
            assert len(err.strip().splitlines()) == 1 and "faults" in err, err
            r = subprocess.run(cli_argv(*args, "--no-progress"), env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
        assert bucket_tree(url) == tree(local)
    finally:
        sw.stop()


def test_a_staging_folder_others_could_write_to_is_refused_in_one_line(synth_src, s3, tmp_path, monkeypatch):
    """In a shared TMPDIR (no writable home) another user could make imgprep's folder first: its
    state would be read back and trusted, so a folder that is not private is refused."""
    home = tmp_path / "xdg"
    (home / "imgprep").mkdir(parents=True)
    os.chmod(home / "imgprep", 0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    with pytest.raises(ImgprepError, match=r"imgprep: imgprep's staging folder is not private.*set XDG_CACHE_HOME"):
        prepare(PrepareConfig(synth_src, "s3://imgprep-test/not-private", workers=1, **SETTINGS), **QUIET)
    assert not Store("s3://imgprep-test/not-private").head_or_none(bucket_out.LOCK)


def test_pieces_written_by_the_driver_into_a_bucket_are_a_local_runs_bytes(synth_src, s3, tmp_path, monkeypatch):
    """Fewer units than 2 workers can share: the units are cut into pieces, the driver writes each
    shard from its pieces and puts it; the objects equal a one-worker local run's."""
    import imgprep.prepare as prep

    monkeypatch.setattr(prep, "MIN_PIECE", 2)
    settings = {**SETTINGS, "shard_size": 12}
    here = str(tmp_path / "here")
    prepare(PrepareConfig(synth_src, here, workers=1, **settings), **QUIET)
    url = "s3://imgprep-test/pieces"
    prepare(PrepareConfig(synth_src, url, workers=2, **settings), **QUIET)
    assert bucket_tree(url) == tree(here)
