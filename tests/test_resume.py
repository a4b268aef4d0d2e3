"""Interruptions: kill -9 and Ctrl-C of the whole command, and a worker process dying mid-unit."""

import os
import signal
import subprocess
import time

import pytest

from crashing import CrashingSource
from helpers import cli_argv, slow_reads_env, tree
from imgprep.prepare import PrepareConfig, prepare

QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture
def slow_env(tmp_path):
    return slow_reads_env(tmp_path / "slow-reads")


def _start_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        cli_argv(*args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_shards(out: str, n: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        d = os.path.join(out, "train")
        if os.path.isdir(d) and len([f for f in os.listdir(d) if f.endswith(".tar")]) >= n:
            return
        time.sleep(0.005)


def _rerun(args: list[str]) -> str:
    r = subprocess.run(cli_argv(*args), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _args(src: str, out: str, workers: int) -> list[str]:
    return [
        "prepare",
        src,
        out,
        "--size",
        "48",
        "--shard-size",
        "3",
        "--seed",
        "5",
        "--workers",
        str(workers),
        "--no-progress",
    ]


def test_kill_9_then_rerun_is_byte_identical(synth_src, tmp_path, slow_env):
    clean, out = str(tmp_path / "clean"), str(tmp_path / "killed")
    prepare(PrepareConfig(synth_src, clean, size=48, shard_size=3, seed=5, workers=1), **QUIET)
    p = _start_cli(_args(synth_src, out, 1), slow_env)
    _wait_for_shards(out, 3)
    p.send_signal(signal.SIGKILL)  # without warning
    p.communicate()
    assert not os.path.exists(os.path.join(out, "manifest.json"))  # really interrupted mid-run
    assert "resuming" in _rerun(_args(synth_src, out, 1))
    assert tree(out) == tree(clean)


def test_ctrl_c_stops_the_process_pool_and_the_rerun_is_byte_identical(synth_src, tmp_path, slow_env):
    clean, out = str(tmp_path / "clean"), str(tmp_path / "stopped")
    prepare(PrepareConfig(synth_src, clean, size=48, shard_size=3, seed=5, workers=2), **QUIET)
    p = _start_cli(_args(synth_src, out, 2), slow_env)
    _wait_for_shards(out, 3)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group, workers too
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: interrupted;") and "Traceback" not in err, err
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    assert "resuming" in _rerun(_args(synth_src, out, 2))
    assert tree(out) == tree(clean)


def _crash_once_at(synth_src: str, tmp_path, monkeypatch, class_no: int, file_no: int) -> str:
    """A pool worker dies (like an OOM kill) the first time it reads that image; the marker file
    that says it did."""
    import imgprep.prepare

    cls = sorted(os.listdir(os.path.join(synth_src, "train")))[class_no]
    victim = f"train/{cls}/{sorted(os.listdir(os.path.join(synth_src, 'train', cls)))[file_no]}"
    marker = str(tmp_path / "crashed")
    discover = imgprep.prepare.discover

    def with_crashing_source(*args):
        index = discover(*args)
        index.source = CrashingSource(index.source.root, index.source.archives, victim, marker)
        return index

    monkeypatch.setattr(imgprep.prepare, "discover", with_crashing_source)
    return marker


def test_dead_worker_unit_is_redone(synth_src, prepared, tmp_path, monkeypatch):
    """A worker process of the real pool dies mid-unit (like an OOM kill): its unit is redone."""
    out = str(tmp_path / "out")
    marker = _crash_once_at(synth_src, tmp_path, monkeypatch, 1, 2)
    prepare(PrepareConfig(synth_src, out, size=64, shard_size=5, seed=3, workers=2), **QUIET)
    assert os.path.exists(marker)  # a worker did die
    assert tree(out) == tree(prepared)  # no sample lost or duplicated, same bytes


def test_kill_9_of_the_main_process_ends_its_workers_too(synth_src, tmp_path, slow_env):
    """The pool's workers, the forkserver and the resource tracker all end within seconds."""
    out = str(tmp_path / "out")
    args = cli_argv(*_args(synth_src, out, 2))
    p = subprocess.Popen(
        args, env=slow_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )  # its own session: every process it starts is in the group
    _wait_for_shards(out, 2)
    p.send_signal(signal.SIGKILL)
    time.sleep(1)  # not reaped yet: a zombie must not keep the workers alive either
    p.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.killpg(p.pid, 0)  # anyone left in the process group?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("processes of the killed run were still alive 15 s later")


class _StopsAfter:
    """An executor that runs units in this process and is interrupted (Ctrl-C) after `n` of them."""

    def __init__(self, n: int):
        self.n = n

    def run(self, fn, jobs, on_done, on_progress):
        for k, job in enumerate(jobs):
            if k == self.n:
                raise KeyboardInterrupt
            on_done(fn(job, on_progress))


def _copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return str(dst)


def test_a_resume_after_src_changed_starts_over_and_equals_a_fresh_run(synth_src, tmp_path):
    """Interrupted after 2 of 6 shards, then a JPEG is added to SRC: the rerun says so in one line and
    starts over; the result equals a fresh run over the changed SRC (no sample twice, none missing)."""
    import shutil

    from imgprep.errors import ImgprepError
    from imgprep.verify import verify

    src = _copy_tree(synth_src, tmp_path / "src")
    out = str(tmp_path / "out")
    cfg = PrepareConfig(src, out, size=32, shard_size=5, seed=3, workers=1)
    with pytest.raises(ImgprepError, match="interrupted; 2 of 7 shards are done"):
        prepare(cfg, progress=False, log=lambda s: None, executor=_StopsAfter(2))
    cls = sorted(os.listdir(os.path.join(src, "train")))[0]
    first = sorted(os.listdir(os.path.join(src, "train", cls)))[0]
    shutil.copy(os.path.join(src, "train", cls, first), os.path.join(src, "train", cls, "added.jpg"))
    # what a run stopped mid-shard leaves: a piece's spilled file, a shard being written
    for name in (".train-000004.tar.piece-0000002.partial", ".train-000006.tar.partial"):
        open(os.path.join(out, "train", name), "wb").close()
    lines = []
    summary = prepare(cfg, progress=False, log=lines.append)
    assert any("files changed since the interrupted run (the listing differs); starting over" in x for x in lines)
    assert summary["splits"]["train"]["count"] == 25
    fresh = str(tmp_path / "fresh")
    prepare(PrepareConfig(src, fresh, size=32, shard_size=5, seed=3, workers=1), **QUIET)
    assert tree(out) == tree(fresh)
    assert verify(out)["problems"] == []


def test_an_out_inside_src_is_never_taken_for_a_class(synth_src, tmp_path):
    """`prepare cf cf/out`, interrupted and resumed: OUT's own files are not a class `out` on either
    run, and the result equals a run into an OUT outside SRC."""
    from imgprep.errors import ImgprepError

    cf = _copy_tree(os.path.join(synth_src, "train"), tmp_path / "cf")  # a folder of class folders
    outside = str(tmp_path / "outside")  # made first: an OUT inside cf would be a class folder to this run
    prepare(PrepareConfig(cf, outside, size=32, shard_size=5, seed=3, workers=1), **QUIET)
    out = os.path.join(cf, "out")
    cfg = PrepareConfig(cf, out, size=32, shard_size=5, seed=3, workers=1)
    with pytest.raises(ImgprepError, match="interrupted"):
        prepare(cfg, progress=False, log=lambda s: None, executor=_StopsAfter(2))
    prepare(cfg, **QUIET)
    assert tree(out) == tree(outside)
    import json

    m = json.load(open(os.path.join(out, "manifest.json")))
    assert [c["name"] for c in m["classes"]] == sorted(c for c in os.listdir(cf) if c != "out")
    assert m["splits"]["train"]["count"] == 24


def test_verify_finds_a_source_stored_twice(prepared, tmp_path):
    """A dataset forged whole (manifest and shards agree) in which one source image is stored twice."""
    import json

    from imgprep.shards import ShardWriter, iter_samples
    from imgprep.verify import verify

    out = _copy_tree(prepared, tmp_path / "dup")
    m = json.load(open(os.path.join(out, "manifest.json")))
    rec = m["splits"]["train"]["shards"][0]
    path = os.path.join(out, rec["path"])
    samples = list(iter_samples(path))
    samples[1][1]["json"] = samples[0][1]["json"]  # sample 1 claims sample 0's source
    w = ShardWriter(path)
    for key, sample in samples:
        w.write(key, {k: sample[k] for k in ("cls", "jpg", "json")})
    info = w.close()
    rec.update(bytes=info.bytes, sha256=info.sha256, sample_crc32=info.sample_crc32)
    open(os.path.join(out, "manifest.json"), "w").write(json.dumps(m))
    source = json.loads(samples[0][1]["json"])["source"]
    assert verify(out)["problems"] == [f"train: source {source} is stored 2 times"]


def test_a_dead_worker_mid_piece_has_its_piece_redone(synth_src, tmp_path, monkeypatch):
    """Units cut into pieces (fewer units than the workers can share): a worker dies mid-piece,
    that piece is redone, and the shards equal one worker's."""
    import imgprep.prepare

    monkeypatch.setattr(imgprep.prepare, "MIN_PIECE", 2)
    one = str(tmp_path / "one")
    prepare(PrepareConfig(synth_src, one, size=64, shard_size=12, seed=3, workers=1), **QUIET)
    marker = _crash_once_at(synth_src, tmp_path, monkeypatch, 2, 4)
    two = str(tmp_path / "two")
    prepare(PrepareConfig(synth_src, two, size=64, shard_size=12, seed=3, workers=2), **QUIET)
    assert os.path.exists(marker)
    assert tree(two) == tree(one)
