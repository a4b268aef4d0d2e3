"""Hostile and damaged input (issue 12): nothing runs code from a file, nothing outside the dataset is
read, two writers never share a folder. Each case gets one line on stderr and no traceback."""

import json
import os
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from helpers import cli_argv, slow_reads_env
from imgprep.cli.main import main
from imgprep.errors import ImgprepError
from imgprep.fileio import FolderLock
from imgprep.prepare import PrepareConfig, prepare

QUIET = dict(progress=False, log=lambda s: None)
# one step of a tiny network: enough for a run folder and a checkpoint
SMALL_TRAIN = [
    "--epochs",
    1,
    "--steps-per-epoch",
    1,
    "--batch-size",
    8,
    "--init",
    "kaiming",
    "--width-mult",
    0.125,
    "--workers",
    1,
    "--no-progress",
]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *words):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data(prepared128, tmp_path):
    """A private copy of a small prepared dataset, free to damage."""
    out = tmp_path / "data"
    shutil.copytree(prepared128, out)
    return out


def edit_manifest(out, fn):
    p = out / "manifest.json"
    m = json.loads(p.read_text())
    m = fn(m)
    p.write_text(json.dumps(m))


# --- 1. a checkpoint runs no code ---------------------------------------------------------------


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(prepared128, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    r = run("train", prepared128, "--run", run_dir, *SMALL_TRAIN)
    assert r.exit_code == 0, r.output
    return run_dir


def test_a_crafted_checkpoint_runs_nothing(prepared128, trained, tmp_path):
    import torch

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    marker = tmp_path / "pwned"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["config"]["payload"] = Exploit(marker)  # a valid checkpoint that also carries a payload
    torch.save(ckpt, run_dir / "checkpoint.pt")
    one_line_error(
        run("eval", run_dir, "--data", prepared128, "--workers", 1), "checkpoint.pt", "nothing in it was run"
    )
    one_line_error(
        run(
            "train",
            prepared128,
            "--run",
            run_dir,
            "--resume",
            "--epochs",
            2,
            "--width-mult",
            0.125,
            "--init",
            "kaiming",
            "--workers",
            1,
            "--no-progress",
        ),
        "checkpoint.pt",
    )
    assert not marker.exists()


def test_a_foreign_file_as_checkpoint_is_one_line(prepared128, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    one_line_error(run("eval", tmp_path / "run", "--data", prepared128, "--workers", 1), "checkpoint.pt")


# --- 2. the manifest is validated, its paths stay inside the dataset ----------------------------


def test_a_shard_path_outside_the_dataset_is_refused_before_opening(data):
    edit_manifest(
        data,
        lambda m: {
            **m,
            "splits": {
                **m["splits"],
                "train": {
                    **m["splits"]["train"],
                    "shards": [{**m["splits"]["train"]["shards"][0], "path": "../../../../etc/passwd"}]
                    + m["splits"]["train"]["shards"][1:],
                },
            },
        },
    )
    for args in (("verify", data), ("load", data, "--steps", 1, "--workers", 1), ("stats", data)):
        line = one_line_error(run(*args), "leads outside the dataset folder")
        assert "root:" not in line  # nothing of /etc/passwd is shown


def test_an_absolute_path_to_a_valid_shard_elsewhere_is_refused(data, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = data / "train" / "train-000000.tar"
    shutil.copy(first, elsewhere / "x.tar")
    shutil.copy(str(first)[:-4] + ".idx", elsewhere / "x.idx")

    def point_away(m):
        m["splits"]["train"]["shards"][0]["path"] = str(elsewhere / "x.tar")
        return m

    edit_manifest(data, point_away)
    one_line_error(run("verify", data), "not a relative path inside the dataset folder")
    one_line_error(run("load", data, "--steps", 1, "--workers", 1), "not a relative path inside the dataset folder")


def test_a_shard_symlinked_to_outside_is_refused(data, tmp_path):
    first = data / "train" / "train-000000.tar"
    outside = tmp_path / "outside.tar"
    shutil.move(first, outside)
    os.symlink(outside, first)
    one_line_error(run("load", data, "--steps", 1, "--workers", 1), "leads outside the dataset folder")


@pytest.mark.parametrize(
    "content", ["{}", "[]", "null", '"text"', '{"format": "imgprep-webdataset"}', "not json at all"]
)
def test_a_manifest_of_the_wrong_shape_is_one_line(data, content):
    (data / "manifest.json").write_text(content)
    for args in (("verify", data), ("load", data, "--steps", 1, "--workers", 1), ("stats", data)):
        one_line_error(run(*args), "manifest")


@pytest.mark.parametrize(
    "damage",
    [
        "splits_not_object",
        "shards_not_list",
        "count_is_text",
        "path_is_number",
        "size_missing",
        "classes_empty",
        "newer_version",
    ],
)
def test_a_manifest_with_wrong_types_is_one_line(data, damage):
    def edit(m):
        train = m["splits"]["train"]
        if damage == "splits_not_object":
            m["splits"] = 5
        elif damage == "shards_not_list":
            train["shards"] = "train-000000.tar"
        elif damage == "count_is_text":
            train["shards"][0]["count"] = "8"
        elif damage == "path_is_number":
            train["shards"][0]["path"] = 7
        elif damage == "size_missing":
            del m["config"]["size"]
        elif damage == "classes_empty":
            m["classes"] = []
        else:
            m["format_version"] = 99
        return m

    edit_manifest(data, edit)
    for args in (("verify", data), ("load", data, "--steps", 1, "--workers", 1)):
        one_line_error(run(*args), "manifest.json")
    r = run("train", data, "--run", data.parent / "r", "--epochs", 1, "--workers", 1, "--no-progress")
    one_line_error(r, "manifest.json")
    assert not (data.parent / "r").exists()


# --- 3. one writer per folder -------------------------------------------------------------------


def test_a_second_prepare_into_a_locked_out_is_refused(synth_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(str(out), "OUT"), pytest.raises(ImgprepError, match=f"in use by process {os.getpid()}"):
        prepare(PrepareConfig(synth_src, str(out), size=32), **QUIET)
    assert os.listdir(out) == []
    prepare(PrepareConfig(synth_src, str(out), size=32, workers=1), **QUIET)  # the lock died with its holder
    assert (out / "manifest.json").exists()


def test_two_prepare_processes_into_one_out(synth_src, tmp_path):
    """The first run holds OUT to the end; the second gets one line naming it; the result verifies."""
    out = tmp_path / "out"
    env = slow_reads_env(tmp_path / "slow")

    def args(shard_size):
        return cli_argv(
            "prepare", synth_src, out, "--size", 40, "--shard-size", shard_size, "--workers", 1, "--no-progress"
        )

    first = subprocess.Popen(args(3), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "train").is_dir():
        time.sleep(0.01)
    second = subprocess.run(args(4), capture_output=True, text=True)
    assert second.returncode == 1
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0], second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert run("verify", out).exit_code == 0


def test_a_second_train_into_a_locked_run_dir_is_refused(prepared128, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FolderLock(str(run_dir), "RUN_DIR"):
        r = run("train", prepared128, "--run", run_dir, *SMALL_TRAIN)
    one_line_error(r, "RUN_DIR is in use by process")
    assert os.listdir(run_dir) == []


# --- 4. what a source folder may hold ------------------------------------------------------------


def small_set(tmp_path, per_class=4):
    from imgprep.synth import SynthConfig, synthesize

    src = tmp_path / "s"
    synthesize(SynthConfig(str(src), classes=2, per_class=per_class, val_per_class=0, min_side=40, max_side=60))
    return src


def labels_by_source(out):
    from imgprep.shards import iter_samples

    m = json.loads((out / "manifest.json").read_text())
    found = []
    for sh in m["splits"]["train"]["shards"]:
        for _, c in iter_samples(str(out / sh["path"])):
            meta = json.loads(c["json"])
            found.append((meta["source"], int(c["cls"])))
    return m, sorted(found)


def test_a_directory_symlink_to_the_parent_neither_loops_nor_mislabels(tmp_path):
    src = small_set(tmp_path)
    first = sorted(os.listdir(src / "train"))[0]
    os.symlink("..", src / "train" / first / "updir")  # the reproduction
    os.symlink(".", src / "train" / first / "loop")  # and a loop onto itself
    out = tmp_path / "out"
    prepare(PrepareConfig(str(src), str(out), size=32, workers=1), **QUIET)
    m, found = labels_by_source(out)
    classes = sorted(os.listdir(src / "train"))
    assert len(found) == 8 and m["splits"]["train"]["skipped"] == 2
    assert all(source.split("/")[1] == classes[label] for source, label in found)


def test_a_file_reached_twice_is_listed_once_and_a_folder_named_like_an_image_is_a_folder(tmp_path):
    src = small_set(tmp_path)
    a, b = sorted(os.listdir(src / "train"))
    one = sorted(os.listdir(src / "train" / a))[0]
    os.symlink(os.path.join("..", a, one), src / "train" / b / "same.jpg")  # one file in two classes
    (src / "train" / b / "album.jpg").mkdir()  # a folder with an image's name: walked into
    shutil.copy(src / "train" / b / sorted(os.listdir(src / "train" / b))[0], src / "train" / b / "album.jpg" / "x.jpg")
    out = tmp_path / "out"
    prepare(PrepareConfig(str(src), str(out), size=32, workers=1), **QUIET)
    m, found = labels_by_source(out)
    sources = [s for s, _ in found]
    assert len(found) == 9 and f"train/{b}/album.jpg/x.jpg" in sources and f"train/{b}/same.jpg" not in sources
    assert m["splits"]["train"]["skipped"] == 1 and m["splits"]["train"]["rejected"] == 0


def prepare_process(src, out, *extra):
    """`imgprep prepare SRC OUT` at size 32 on one worker, in its own process (a hang is a timeout)."""
    cmd = cli_argv("prepare", src, out, "--size", 32, "--workers", 1, "--no-progress", *extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_fifos_are_skipped_unopened(tmp_path):
    src = small_set(tmp_path)
    os.mkfifo(src / "train" / sorted(os.listdir(src / "train"))[0] / "p.jpg")
    out = tmp_path / "out"
    r = prepare_process(src, out)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["train"]["count"] == 8 and m["splits"]["train"]["skipped"] == 1


def test_a_class_folder_that_cannot_be_listed_is_an_error_not_silence(tmp_path, monkeypatch):
    src = small_set(tmp_path)
    locked = str(src / "train" / sorted(os.listdir(src / "train"))[1])
    scandir = os.scandir

    def refuse(path="."):  # root reads any folder, so the permission error is simulated
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(ImgprepError, match="cannot list this folder .Permission denied"):
        prepare(PrepareConfig(str(src), str(tmp_path / "out"), size=32, workers=1), **QUIET)
    assert not (tmp_path / "out").exists()


# --- 6. the pixel limit, from the header -------------------------------------------------------


def png_header_only(width, height, bit_depth=16):
    """A PNG whose header claims width x height (grayscale) and whose data is a few bytes: a bomb's shape."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("limit", [None, 8000])
def test_images_over_the_pixel_limit_are_rejected_before_decoding(tmp_path, limit):
    from helpers import jpeg_bytes, smooth_rgb

    src = small_set(tmp_path, per_class=2)
    cls = src / "train" / sorted(os.listdir(src / "train"))[0]
    (cls / "bomb.png").write_bytes(png_header_only(13000, 13000))  # 169 Mpx, 16-bit
    (cls / "big.jpg").write_bytes(jpeg_bytes(smooth_rgb(100, 100)))  # 10,000 px: over a limit of 8000
    out = tmp_path / "out"
    extra = ["--max-pixels", str(limit)] if limit else []
    r = prepare_process(src, out, *extra)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    rejects = {
        json.loads(x)["path"].rsplit("/", 1)[1]: json.loads(x)["reason"]
        for x in (out / "rejects.jsonl").read_text().splitlines()
    }
    assert "13000x13000 (169,000,000 pixels) is over the limit" in rejects["bomb.png"]
    assert ("big.jpg" in rejects) == (limit is not None)
    if limit:  # the synthetic images (at most 60x120 = 7200 px) pass
        assert "over the limit of 8,000 pixels" in rejects["big.jpg"] and len(rejects) == 2


# --- 7. a batch larger than the split -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_batch_larger_than_the_split_is_refused_before_allocating(prepared128, backend):
    r = run("load", prepared128, "--batch-size", 100000, "--backend", backend, "--workers", 1)
    one_line_error(r, "--batch-size 100000", "use at most 24")


# --- 8. a full disk ---------------------------------------------------------------------------


def partials(out):
    return [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".partial")]


def test_disk_full_while_writing_a_shard_is_one_line_and_resumes_identically(
    synth_src, prepared, tmp_path, monkeypatch
):
    import errno

    from helpers import tree
    from imgprep import shards

    written, real = [0], shards._HashingFile.write

    def write(self, b):
        written[0] += len(b)
        if written[0] > 40_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    out = tmp_path / "out"
    args = ("prepare", synth_src, out, "--size", 64, "--shard-size", 5, "--seed", 3, "--workers", 1, "--no-progress")
    with monkeypatch.context() as m:
        m.setattr(shards._HashingFile, "write", write)
        line = one_line_error(run(*args), "cannot write (No space left on device)", "run the same command again")
    assert ".tar" in line and not partials(out) and not (out / "manifest.json").exists()
    r = run(*args)  # space freed
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    assert tree(out) == tree(prepared)


@pytest.fixture
def tiny_disk(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (and a kernel that allows it)")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_real_full_disk_is_one_line_and_the_rerun_after_freeing_space_is_identical(synth_src, prepared, tiny_disk):
    from helpers import tree

    out = tiny_disk / "out"
    args = cli_argv(
        "prepare", synth_src, out, "--size", 64, "--shard-size", 5, "--seed", 3, "--workers", 2, "--no-progress"
    )
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "No space left on device" in lines[0], r.stderr
    assert not partials(out)
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)  # space freed
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert tree(out) == tree(prepared)


def test_a_full_disk_while_pieces_are_written_leaves_no_piece_behind(synth_src, tiny_disk, monkeypatch):
    """Units cut into pieces whose bytes wait in files beside their shards: the disk fills, the run
    stops with the error, and neither the piece that failed nor those already written stay behind
    to keep the disk full."""
    import imgprep.prepare

    monkeypatch.setattr(imgprep.prepare, "MIN_PIECE", 2)
    out = tiny_disk / "out"
    with pytest.raises(ImgprepError, match="No space left on device"):
        prepare(PrepareConfig(synth_src, str(out), size=64, shard_size=12, seed=3, workers=2), **QUIET)
    assert not partials(out)


# --- 10. epochs; 11. label files in odd encodings ------------------------------------------------


def test_load_iterates_every_epoch_asked_for(prepared128):
    r = run("load", prepared128, "--epochs", 3, "--batch-size", 8, "--workers", 1, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["batches"] == 3 * 3 and rep["images"] == 3 * 24  # 24 samples, batches of 8


@pytest.fixture
def flat_val(tmp_path):
    src = small_set(tmp_path)
    classes = sorted(os.listdir(src / "train"))
    (src / "val").mkdir()
    for i, c in enumerate(classes):
        shutil.copy(src / "train" / c / sorted(os.listdir(src / "train" / c))[0], src / "val" / f"v{i}.jpg")
    return src, classes


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_val_labels_with_a_byte_order_mark(flat_val, tmp_path, encoding):
    src, classes = flat_val
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\n".join(classes).encode(encoding))
    out = tmp_path / "out"
    r = run("prepare", src, out, "--val-labels", labels, "--size", 32, "--workers", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["splits"]["val"]["count"] == 2


def test_binary_val_labels_are_one_line(flat_val, tmp_path):
    src, _ = flat_val
    labels = tmp_path / "labels.bin"
    labels.write_bytes(b"\x80\x81\xfe\x00binary")
    one_line_error(
        run("prepare", src, tmp_path / "out", "--val-labels", labels, "--no-progress"),
        "labels.bin",
        "save the file as UTF-8 text",
    )
    assert not (tmp_path / "out").exists()


# --- 5. a shard whose bytes changed after prepare -------------------------------------------------


def damage_a_sample(out, shard="train/train-000001.tar", sample=2):
    """Flip 64 bytes inside the JPEG of one sample (its size unchanged); return its key."""
    from imgprep.shards import index_path, read_dali_index

    path = str(out / shard)
    (jpg,) = [e for e in read_dali_index(index_path(path))[sample] if e[0] == "jpg"]
    data = bytearray(open(path, "rb").read())
    start = jpg[1] + jpg[2] // 2
    data[start : start + 64] = bytes(b ^ 0x5A for b in data[start : start + 64])
    open(path, "wb").write(bytes(data))
    return jpg[3].split(".")[0]


def load_error(data, backend, *words):
    """`imgprep load` of the damaged dataset fails with one line naming train-000001.tar and `words`."""
    r = run("load", data, "--backend", backend, "--batch-size", 8, "--workers", 1)
    return one_line_error(r, "train-000001.tar", *words)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_changed_sample_stops_loading_and_training_naming_it(data, backend, tmp_path):
    key = damage_a_sample(data)
    load_error(data, backend, f"sample {key} changed", "--on-corrupt skip")
    r = run(
        "train",
        data,
        "--run",
        tmp_path / "r",
        "--epochs",
        1,
        "--batch-size",
        8,
        "--init",
        "kaiming",
        "--width-mult",
        0.125,
        "--backend",
        backend,
        "--workers",
        1,
        "--no-progress",
    )
    one_line_error(r, "train-000001.tar", f"sample {key} changed")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_on_corrupt_skip_leaves_the_sample_out_and_counts_it(data, backend):
    damage_a_sample(data)
    r = run(
        "load",
        data,
        "--backend",
        backend,
        "--batch-size",
        8,
        "--workers",
        1,
        "--on-corrupt",
        "skip",
        "--json",
        "--epochs",
        2,
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["images"] == 2 * 23 and rep["corrupt_skipped"] == 2 and rep["batches"] == 2 * 3


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_truncated_shard_is_one_line_even_when_skipping(data, backend):
    path = data / "train" / "train-000002.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for policy in ("error", "skip"):
        one_line_error(
            run("load", data, "--backend", backend, "--workers", 1, "--batch-size", 8, "--on-corrupt", policy),
            "train-000002.tar",
            "truncated or replaced",
        )


def forge_a_sample(out, side=1024, shard="train/train-000001.tar", sample=2):
    """Replace one sample's JPEG with a side x side one and rewrite the shard, its index and the
    manifest's record to agree (a dataset forged whole: every checksum matches); return its key."""
    import numpy as np
    import simplejpeg

    from imgprep.shards import ShardWriter, iter_samples

    path = str(out / shard)
    samples = list(iter_samples(path))
    key = samples[sample][0]
    big = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    samples[sample][1]["jpg"] = simplejpeg.encode_jpeg(big, 90)
    w = ShardWriter(path)
    for k, parts in samples:
        w.write(k, parts)
    info = w.close()
    m = json.load(open(out / "manifest.json"))
    rec = next(r for r in m["splits"]["train"]["shards"] if r["path"] == shard)
    rec.update(bytes=info.bytes, sha256=info.sha256, sample_crc32=info.sample_crc32)
    (out / "manifest.json").write_text(json.dumps(m))
    return key


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_forged_oversized_jpeg_never_reaches_the_decoder(data, backend):
    """Manifest and shard agree, but one JPEG is 1024x1024 in a 128 dataset: its header is read
    before any decoder sees it; an error naming it, or left out with --on-corrupt skip."""
    key = forge_a_sample(data)
    load_error(data, backend, f"sample {key} changed", "not a JPEG of the dataset's size")
    r = run("load", data, "--backend", backend, "--batch-size", 8, "--workers", 1, "--on-corrupt", "skip", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["images"] == 23 and rep["corrupt_skipped"] == 1


def test_a_manifest_claiming_a_huge_stored_size_is_one_line(data):
    m = json.load(open(data / "manifest.json"))
    m["config"]["size"] = 100_000
    (data / "manifest.json").write_text(json.dumps(m))
    one_line_error(run("load", data, "--workers", 1), "config.size", "from 1 to 9459")


def test_verify_reads_a_forged_size_from_the_header(data):
    key = forge_a_sample(data, side=2048)
    r = run("verify", data, "--workers", 1)
    assert r.exit_code != 0 and f"sample {key} is not a 128x128 JPEG (from its header)" in r.output
