"""Interruptions: kill -9 of the whole command, and a worker process dying mid-unit."""

import os
import signal
import subprocess
import sys
import time

from conftest import tree
from crashing import CrashingSource
from imgprep.executors import LocalExecutor
from imgprep.prepare import PrepareConfig, prepare

QUIET = dict(progress=False, log=lambda s: None)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The CLI with reads slowed down, so that a kill lands mid-run.
SLOW_CLI = """
import sys, time
from imgprep import sources
_read = sources.Source.read
def slow(self, item):
    time.sleep(0.02)
    return _read(self, item)
sources.Source.read = slow
from imgprep.cli.main import main
main(sys.argv[1:])
"""



def test_kill_9_then_rerun_is_byte_identical(synth_src, tmp_path):
    clean, out = str(tmp_path / "clean"), str(tmp_path / "killed")
    args = ["prepare", synth_src, "--size", "48", "--shard-size", "3", "--seed", "5", "--workers", "1", "--no-progress"]
    prepare(PrepareConfig(synth_src, clean, size=48, shard_size=3, seed=5, workers=1), **QUIET)
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args[:2], out, *args[2:]], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait for a few finished shards, then kill without warning
        d = os.path.join(out, "train")
        if os.path.isdir(d) and len([f for f in os.listdir(d) if f.endswith(".tar")]) >= 3:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(os.path.join(out, "manifest.json"))  # really interrupted mid-run
    r = subprocess.run([sys.executable, "-m", "imgprep.cli.main", *args[:2], out, *args[2:]], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert tree(out) == tree(clean)


class CrashOnce(LocalExecutor):
    """The local pool, with a source that kills its worker process once."""

    def __init__(self, workers, crash_ref, marker):
        super().__init__(workers)
        self.crash_ref, self.marker = crash_ref, marker

    def run(self, jobs, on_done, on_progress):
        src = jobs[0][0]
        crashing = CrashingSource(src.root, src.archives, self.crash_ref, self.marker)
        super().run([(crashing,) + j[1:] for j in jobs], on_done, on_progress)


def test_dead_worker_unit_is_redone(synth_src, prepared, tmp_path):
    out = str(tmp_path / "out")
    cls = sorted(os.listdir(os.path.join(synth_src, "train")))[1]
    victim = f"train/{cls}/{sorted(os.listdir(os.path.join(synth_src, 'train', cls)))[2]}"
    marker = str(tmp_path / "crashed")
    ex = CrashOnce(2, victim, marker)
    prepare(PrepareConfig(synth_src, out, size=64, shard_size=5, seed=3, workers=2), executor=ex, **QUIET)
    assert os.path.exists(marker)  # a worker did die
    assert tree(out) == tree(prepared)  # no sample lost or duplicated, same bytes
