"""Progress off a terminal is plain lines: `imgprep train ... > log 2>&1` reads as a log."""

import io
import subprocess

from helpers import cli_argv
from imgprep.progress import PlainProgress, progress_bar


def test_off_a_terminal_progress_is_whole_lines_with_the_figures():
    out = io.StringIO()
    bar = progress_bar(10, "epoch 1/2", "batch", stream=out)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0  # a line per update, to see them
    bar.set_postfix(loss="2.301")
    bar.update(4)
    bar.update(6)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("epoch 1/2: 4/10 batch (40%), ") and lines[0].endswith("batch/s, loss=2.301")
    assert lines[-1].startswith("epoch 1/2: 10/10 batch (100%)")
    quiet = io.StringIO()
    progress_bar(10, "x", "img", enabled=False, stream=quiet).update(10)
    assert quiet.getvalue() == ""


def test_prepare_and_train_write_no_carriage_returns_into_a_log(synth_src, prepared128, tmp_path):
    prep = subprocess.run(
        cli_argv("prepare", synth_src, tmp_path / "out", "--size", 64, "--workers", 1), capture_output=True, text=True
    )
    assert prep.returncode == 0, prep.stderr
    log = prep.stdout + prep.stderr
    assert "\r" not in log and any(x.startswith("prepare: 32/32 img (100%)") for x in log.splitlines())
    tr = subprocess.run(
        cli_argv("train", prepared128, "--run", tmp_path / "run", "--epochs", 2, "--batch-size", 8)
        + ["--width-mult", "0.25", "--init", "kaiming", "--workers", "1"],
        capture_output=True,
        text=True,
    )
    assert tr.returncode == 0, tr.stderr
    log = tr.stdout + tr.stderr
    assert "\r" not in log and "\x1b" not in log
    assert [x.split(":")[0] for x in log.splitlines() if x.startswith("epoch ")] == ["epoch 1", "epoch 2"]
