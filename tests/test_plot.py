"""`imgprep plot`: curves of runs from their metrics.jsonl."""

import json

from click.testing import CliRunner

from imgprep.cli.main import main
from imgprep.trainer.plot import lr_drops
from imgprep.trainer.runtime import read_epochs

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(folder, lrs, val=True):
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w") as f:
        for i, lr in enumerate(lrs, 1):
            f.write(json.dumps({"type": "step", "epoch": i, "loss": 1.0}) + "\n")
            rec = {"type": "epoch", "epoch": i, "lr": lr, "train_loss": 2.0 / i, "train_top1_error": 0.9 / i}
            if val:
                rec.update(val_loss=2.2 / i, val_top1_error=0.95 / i)
            f.write(json.dumps(rec) + "\n")
        f.write('{"type": "epoch", "epo')  # a line cut by a crash: ignored
    return folder


def test_lr_drops_and_resumed_repeats():
    epochs = [{"epoch": 1, "lr": 0.01}, {"epoch": 2, "lr": 0.01}, {"epoch": 3, "lr": 0.001}, {"epoch": 4, "lr": 1e-4}]
    assert lr_drops(epochs) == [3, 4]


def test_plot_overlays_runs(tmp_path):
    a = write_run(tmp_path / "a", [0.01, 0.01, 0.001, 0.001])
    b = write_run(tmp_path / "b", [0.01, 0.001], val=False)
    with open(a / "metrics.jsonl", "a") as f:  # a resumed run repeats epoch 4: the last line wins
        f.write(json.dumps({"type": "epoch", "epoch": 4, "lr": 0.001, "train_loss": 0.3}) + "\n")
    assert read_epochs(str(a))[-1]["train_loss"] == 2.0 / 4  # appended to the cut line: both skipped
    with open(a / "metrics.jsonl", "a") as f:
        f.write(
            json.dumps({"type": "epoch", "epoch": 4, "lr": 0.001, "train_loss": 0.1, "train_top1_error": 0.1}) + "\n"
        )
    assert read_epochs(str(a))[-1]["train_loss"] == 0.1 and len(read_epochs(str(a))) == 4
    r = CliRunner().invoke(main, ["plot", str(a), str(b), "--out", str(tmp_path / "curves.png")])
    assert r.exit_code == 0, r.output
    assert "a (4 epochs), b (2 epochs)" in r.output
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_plot_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for d, msg in ((tmp_path / "empty", "no metrics.jsonl"), (tmp_path / "nope", "no metrics.jsonl")):
        r = CliRunner().invoke(main, ["plot", str(d), "--out", str(tmp_path / "x.png")])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"type": "step"}\nnot json\n{"type": "step"}\n')
    r = CliRunner().invoke(main, ["plot", str(bad), "--out", str(tmp_path / "x.png")])
    assert r.exit_code != 0 and "no finished epoch yet" in r.output


def test_an_out_that_cannot_be_written_is_one_line(tmp_path):
    run = write_run(tmp_path / "a", [0.01, 0.001])
    (tmp_path / "taken").write_text("a file, not a folder")
    r = CliRunner().invoke(main, ["plot", str(run), "--out", str(tmp_path / "taken" / "curves.png")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "taken" in lines[0] and "check the path and its permissions" in lines[0], r.output
