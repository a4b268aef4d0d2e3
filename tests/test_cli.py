"""The click commands through CliRunner: exit codes, one-line errors, files produced."""

import json
import os

import click
from click.testing import CliRunner

from imgprep.cli.main import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, code=1):
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_synth_prepare_verify_stats(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    r = run("synth", src, "--classes", 3, "--per-class", 4, "--val-per-class", 1, "--workers", 1)
    assert r.exit_code == 0 and "wrote 12 train and 3 val images of 3 classes" in r.output
    r = run("prepare", src, out, "--size", 48, "--shard-size", 5, "--no-progress", "--workers", 2)
    assert r.exit_code == 0, r.output
    assert "prepared 15 images (train 12 in 3 shards, val 3 in 1 shard)" in r.output
    assert os.path.exists(out / "manifest.json") and os.path.exists(out / "stats" / "mean.npy")
    r = run("prepare", src, out, "--size", 48, "--shard-size", 5, "--no-progress")
    assert r.exit_code == 0 and "already complete" in r.output
    r = run("verify", out, "--workers", 1)
    assert r.exit_code == 0 and "ok: 4 shards, 15 samples" in r.output
    r = run("stats", out, "--json", "--workers", 1)
    assert r.exit_code == 0
    rep = json.loads(r.output)
    assert rep["images"] == 12
    # the stored JPEGs decode to pixels close to the ones the statistics were computed on
    # (eigenvectors of near-equal eigenvalues may turn freely in their plane, so compare values)
    assert rep["max_abs_diff"]["mean"] < 1.0
    assert rep["max_abs_diff"]["eigval"] < 0.1 * rep["stored"]["eigval"][0]
    r = run("stats", out)
    assert r.exit_code == 0 and "eigval" in r.output


def test_verify_finds_a_damaged_shard(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    run("synth", src, "--classes", 2, "--per-class", 3, "--val-per-class", 0, "--workers", 1)
    assert run("prepare", src, out, "--size", 32, "--no-progress").exit_code == 0
    shard = out / "train" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = run("verify", out, "--workers", 1)
    assert r.exit_code == 1 and "train/train-000000.tar: sha256 differs" in r.output
    shard.unlink()
    r = run("verify", out, "--workers", 1)
    assert r.exit_code == 1 and "train/train-000000.tar: missing" in r.output


def test_prepare_bad_inputs_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "out"
    assert "no such folder" in one_line_error(run("prepare", tmp_path / "nope", out))
    (tmp_path / "empty").mkdir()
    assert "empty" in one_line_error(run("prepare", tmp_path / "empty", out))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_bytes(b"x")
    assert "no class folders" in one_line_error(run("prepare", tmp_path / "flat", out))
    assert "--bogus" in one_line_error(run("prepare", tmp_path / "flat", out, "--bogus"), code=2)
    assert "--quality" in one_line_error(run("prepare", tmp_path / "flat", out, "--quality", 0), code=2)
    assert not out.exists()


def test_prepare_refuses_other_dataset_in_out(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    run("synth", src, "--classes", 2, "--per-class", 2, "--val-per-class", 0, "--workers", 1)
    assert run("prepare", src, out, "--size", 32, "--no-progress").exit_code == 0
    before = sorted(os.listdir(out / "train"))
    line = one_line_error(run("prepare", src, out, "--size", 40, "--no-progress"))
    assert "--size was 32, now 40" in line
    assert sorted(os.listdir(out / "train")) == before


def test_verify_and_stats_on_non_dataset(tmp_path):
    assert "no manifest.json" in one_line_error(run("verify", tmp_path))
    assert "no such folder" in one_line_error(run("stats", tmp_path / "nope"))


def test_every_listed_command_loads_under_its_own_name():
    """The group imports each command's module only when asked for it: every name it lists gives
    that command (a wrong entry in COMMANDS would surface only when a user ran it)."""
    from imgprep.cli.main import COMMANDS

    ctx = click.Context(main, info_name="imgprep")
    assert main.list_commands(ctx) == list(COMMANDS)
    for name in COMMANDS:
        assert main.get_command(ctx, name).name == name
    assert main.get_command(ctx, "no-such-command") is None
    one_line_error(run("no-such-command"), code=2)


def test_a_local_prepare_imports_no_trainer_loader_or_network_code(synth_src, tmp_path):
    """`imgprep prepare` SRC OUT runs with click and imgprep.prepare only: the start is paid whole
    by every run, and a worker forked from it inherits what it imported."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from imgprep.cli.main import main\n"
        f"main(['prepare', {str(synth_src)!r}, {str(tmp_path / 'out')!r}, '--size', '48', '--workers', '1',"
        " '--no-progress'], standalone_mode=False)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "imgprep.prepare" in loaded and os.path.exists(tmp_path / "out" / "manifest.json")
    heavy = {"http.client", "ssl", "torch", "imgprep.remote", "imgprep.loader_base", "imgprep.trainer.config"}
    assert not heavy & loaded, sorted(heavy & loaded)
    assert not {
        m
        for m in loaded
        if m.startswith("imgprep.cli.") and m not in ("imgprep.cli.main", "imgprep.cli.options", "imgprep.cli.prepare")
    }
