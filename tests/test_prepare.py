"""`prepare` end to end on small synthetic sets, against references computed here."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import cli_argv, tree, write_odd_files
from imgprep.errors import ImgprepError
from imgprep.prepare import PrepareConfig, prepare, process_image
from imgprep.shards import iter_samples, sha256_file

QUIET = dict(progress=False, log=lambda s: None)


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def test_manifest_shards_and_labels(prepared, synth_src):
    m = manifest(prepared)
    classes = sorted(os.listdir(os.path.join(synth_src, "train")))
    assert [c["name"] for c in m["classes"]] == classes and [c["index"] for c in m["classes"]] == [0, 1, 2, 3]
    assert m["format_version"] == 2 and m["config"]["size"] == 64 and m["config"]["seed"] == 3
    for split, n in (("train", 24), ("val", 8)):
        s = m["splits"][split]
        assert s["count"] == n and s["rejected"] == 0 and s["skipped"] == 0
        assert [sh["path"] for sh in s["shards"]] == [f"{split}/{split}-{i:06d}.tar" for i in range(len(s["shards"]))]
        sources = []
        for sh in s["shards"]:
            p = os.path.join(prepared, sh["path"])
            assert os.path.getsize(p) == sh["bytes"] and sha256_file(p) == sh["sha256"]
            assert os.path.exists(p[:-4] + ".idx")
            samples = list(iter_samples(p))
            assert len(samples) == sh["count"] <= 5
            for _key, comp in samples:
                meta = json.loads(comp["json"])
                label = int(comp["cls"].decode())
                cls_dir = meta["source"].split("/")[1]
                assert label == meta["label"] == classes.index(cls_dir) and meta["class"] == cls_dir
                assert meta["source"].startswith(f"{split}/") and meta["width"] >= 60 and meta["height"] >= 60
                sources.append(meta["source"])
        expected = sorted(f"{split}/{c}/{f}" for c in classes for f in os.listdir(os.path.join(synth_src, split, c)))
        assert sorted(sources) == expected  # every image exactly once
        if split == "train":
            assert sources != sorted(sources)  # shuffled across the whole split
            first = {src.split("/")[1] for src in sources[:5]}
            assert len(first) > 1  # the first shard mixes classes


def test_stats_equal_numpy_reference_over_the_stored_pixels(prepared, synth_src):
    pixels = []
    for c in sorted(os.listdir(os.path.join(synth_src, "train"))):
        d = os.path.join(synth_src, "train", c)
        for f in sorted(os.listdir(d)):
            _, px, _ = process_image(open(os.path.join(d, f), "rb").read(), f, 64, 95)
            pixels.append(px)
    imgs = np.stack(pixels).astype(np.float64)  # (24, 64, 64, 3)
    flat = imgs.reshape(-1, 3)
    st = json.load(open(os.path.join(prepared, "stats", "stats.json")))
    mean_img = np.load(os.path.join(prepared, "stats", "mean.npy"))
    assert mean_img.dtype == np.float32 and mean_img.shape == (64, 64, 3)
    np.testing.assert_allclose(mean_img, imgs.mean(0), atol=1e-4)
    np.testing.assert_allclose(st["mean"], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st["std"], flat.std(0), rtol=1e-10)
    cov = np.cov(flat, rowvar=False, bias=True)
    np.testing.assert_allclose(st["cov"], cov, rtol=1e-9)
    w = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(st["eigval"], w, rtol=1e-9)
    vec = np.array(st["eigvec"])
    np.testing.assert_allclose(vec @ vec.T, np.eye(3), atol=1e-12)
    for i in range(3):
        np.testing.assert_allclose(cov @ vec[i], w[i] * vec[i], atol=1e-6 * w[0])
    assert st["images"] == 24 and st["pixels"] == 24 * 64 * 64


def test_odd_files_converted_rejected_skipped(tmp_path):
    src = tmp_path / "src"
    kinds = write_odd_files(str(src / "train" / "a"))
    write_odd_files(str(src / "train" / "b"), seed=1)
    out = str(tmp_path / "out")
    summary = prepare(PrepareConfig(str(src), out, size=32, shard_size=4, workers=2), **QUIET)
    m = manifest(out)
    s = m["splits"]["train"]
    assert s["count"] == 2 * 8  # the eight decodable kinds per class
    assert s["rejected"] == 2 * 3 and s["skipped"] == 2 * 2  # README.txt and .DS_Store
    assert s["conversions"] == {
        k: 2 for k in ("16bit", "alpha", "cmyk", "exif_rotated", "grayscale", "palette", "png_as_jpeg")
    }
    rejects = [json.loads(line) for line in open(os.path.join(out, "rejects.jsonl"))]
    assert sorted(r["path"] for r in rejects) == sorted(
        f"train/{c}/{kinds[k]}" for c in "ab" for k in ("truncated", "empty", "not_image_ext")
    )
    reasons = {r["path"].split("/")[-1]: r["reason"] for r in rejects}
    assert "truncated" in reasons["truncated.JPEG"] and reasons["empty.JPEG"] == "empty file"
    assert summary["rejected"] == 6 and summary["converted"] == 2 * 7


def test_workers_do_not_change_output_and_rerun_changes_nothing(synth_src, prepared, tmp_path):
    out1 = str(tmp_path / "w1")
    prepare(PrepareConfig(synth_src, out1, size=64, shard_size=5, seed=3, workers=1), **QUIET)
    a, b = tree(out1), tree(prepared)
    assert a == b  # byte-identical with 1 and 2 workers (the `prepared` fixture used 2)
    before = {p: os.stat(os.path.join(out1, p)).st_mtime_ns for p in a}
    logs = []
    s = prepare(
        PrepareConfig(synth_src, out1, size=64, shard_size=5, seed=3, workers=2), progress=False, log=logs.append
    )
    assert s["already_complete"] and "already complete" in logs[0]
    assert {p: os.stat(os.path.join(out1, p)).st_mtime_ns for p in a} == before


def test_pieces_of_units_give_the_bytes_of_whole_units(synth_src, tmp_path, monkeypatch):
    """3 units for 2 workers: each is cut into pieces run as jobs of their own (checked), and the
    shards the driver writes from them, the statistics and the manifest are those of 1 worker."""
    import imgprep.prepare as prep

    monkeypatch.setattr(prep, "MIN_PIECE", 2)
    split, seen = prep.split_jobs, []

    def counted(jobs, workers, spill=False):
        out = split(jobs, workers, spill)
        seen.append((len(jobs), len(out), spill))
        return out

    monkeypatch.setattr(prep, "split_jobs", counted)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    prepare(PrepareConfig(synth_src, one, size=64, shard_size=12, seed=3, workers=1), **QUIET)
    prepare(PrepareConfig(synth_src, two, size=64, shard_size=12, seed=3, workers=2), **QUIET)
    assert seen == [(3, 3, True), (3, 10, True)]  # units of 12, 12 and 8 in 2, 4 and 4 shrinking pieces
    assert tree(one) == tree(two)  # the pieces' files (spilled beside the shards) removed too


def test_a_spilled_piece_waits_beside_its_shard_as_a_partial_file(tmp_path):
    """A piece's file is a hidden partial file in the shard's folder, so the partial clean-up of a
    resume removes what a stopped run left."""
    from imgprep.fileio import PARTIAL_SUFFIX
    from imgprep.prepare import Unit, UnitJob, _remove_partials, piece_path

    job = UnitJob(None, Unit("val", 3, []), [], str(tmp_path), 8, 90, False, piece=(32, 48), spill=True)
    path = piece_path(job)
    assert os.path.dirname(path) == str(tmp_path / "val") and path.endswith(PARTIAL_SUFFIX)
    assert os.path.basename(path).startswith(".") and "val-000003" in path and "0000032" in path
    os.makedirs(tmp_path / "val")
    open(path, "wb").close()
    _remove_partials(str(tmp_path))
    assert not os.path.exists(path)


def test_workers_fork_from_the_cli_and_give_the_bytes_of_one_worker(synth_src, tmp_path):
    """From the CLI (one thread, no thread-pool library imported) the pool forks its workers
    directly; the shards, pieces included, are still those of one worker."""
    args = ["--size", "64", "--shard-size", "12", "--seed", "3", "--no-progress"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run(cli_argv("prepare", synth_src, one, *args, "--workers", "1"), check=True, capture_output=True)
    subprocess.run(cli_argv("prepare", synth_src, two, *args, "--workers", "2"), check=True, capture_output=True)
    assert tree(one) == tree(two)


FORK_PROBE = r"""
import sys, threading
import imgprep.prepare
from imgprep._mp import pool_context
print(pool_context(True).get_start_method(), pool_context().get_start_method())
if sys.argv[1] == "thread":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
elif sys.argv[1] == "cv2":
    import cv2
print(pool_context(True).get_start_method())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
@pytest.mark.parametrize("then", ["thread", "cv2"])
def test_pool_forks_only_where_it_is_safe(then):
    """fork only where the caller allows it, with no other thread and no thread-pool library
    imported; forkserver otherwise."""
    r = subprocess.run([sys.executable, "-c", FORK_PROBE, then], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["fork", "forkserver", "forkserver"]


def test_split_jobs_covers_each_unit_once_in_order():
    from imgprep.prepare import Unit, UnitJob, split_jobs

    jobs = [UnitJob(None, Unit("train", i, [(f"{k:08d}", None) for k in range(n)]), [], "", 8, 90, True)
            for i, n in enumerate([17, 100, 40])]  # fmt: skip
    out = split_jobs(jobs, 4)
    for job in jobs:
        pieces = [j.piece or (0, len(j.unit.items)) for j in out if j.unit is job.unit]
        assert [a for a, _ in pieces] == sorted(a for a, _ in pieces) and pieces[0][0] == 0
        assert all(b == c for (_, b), (c, _) in zip(pieces, pieces[1:], strict=False))
        assert pieces[-1][1] == len(job.unit.items) and all(b - a >= 16 for a, b in pieces)
    assert [j.unit.index for j in out] == [1] * 6 + [2] * 2 + [0]  # the largest unit first, the smallest last
    assert split_jobs(jobs, 1) == jobs  # one worker: whole units
    assert split_jobs(jobs * 6, 4) == jobs * 6  # enough units: whole units


def test_pieces_shrink_so_the_workers_end_together():
    """Guided sizes: the first piece is half of a worker's equal share, the later ones shrink to
    1/8 of it, cut at the units' ends; handed out in order to equal workers, they end within the
    largest of the last 2 x workers pieces of each other, itself about 1/8 of a share, and no piece
    is under MIN_PIECE."""
    from imgprep.prepare import MIN_PIECE, piece_bounds

    for sizes, workers in [([1000, 200], 2), ([600, 600], 2), ([1000] * 3, 16), ([5000], 8), ([40, 33], 2)]:
        pieces = [b - a for unit in piece_bounds(sizes, workers) for a, b in unit]
        assert sum(pieces) == sum(sizes) and min(pieces) >= MIN_PIECE
        share = sum(sizes) / workers
        assert pieces[0] == max(MIN_PIECE, sum(sizes) // (2 * workers)) or len(pieces) == len(sizes)
        ends = [0.0] * workers
        for p in pieces:  # each piece to the worker free first
            ends[ends.index(min(ends))] += p
        tail = max(pieces[-2 * workers :])
        assert max(ends) - min(ends) <= tail <= max(2 * MIN_PIECE, share / 8 + MIN_PIECE), (sizes, workers, pieces)


def test_other_settings_into_existing_out_refused(prepared, synth_src):
    before = tree(prepared)
    with pytest.raises(ImgprepError, match="--seed was 3, now 4"):
        prepare(PrepareConfig(synth_src, prepared, size=64, shard_size=5, seed=4), **QUIET)
    assert tree(prepared) == before


def interrupt_after(monkeypatch, reads: int) -> None:
    """Make the (in-process) source raise KeyboardInterrupt, as Ctrl-C would, at its reads+1-th read."""
    from imgprep import sources

    real, count = sources.Source.read, [0]

    def read(self, item, **kw):
        count[0] += 1
        if count[0] > reads:
            raise KeyboardInterrupt
        return real(self, item, **kw)

    monkeypatch.setattr(sources.Source, "read", read)


def test_resume_redoes_a_damaged_recorded_shard(synth_src, prepared, tmp_path, monkeypatch):
    out = str(tmp_path / "d")
    cfg = PrepareConfig(synth_src, out, size=64, shard_size=5, seed=3, workers=1)
    with monkeypatch.context() as m:
        interrupt_after(m, 12)  # two shards of 5 done, the third cut short
        with pytest.raises(ImgprepError, match="interrupted; 2 of 7 shards are done"):
            prepare(cfg, **QUIET)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    assert not [f for f in os.listdir(os.path.join(out, "train")) if f.endswith(".partial")]
    p = os.path.join(out, "train", "train-000000.tar")
    data = bytearray(open(p, "rb").read())
    data[700] ^= 0xFF
    open(p, "wb").write(bytes(data))
    logs = []
    prepare(cfg, progress=False, log=logs.append)
    assert any("changed on disk; redoing those splits" in line for line in logs)
    assert tree(out) == tree(prepared)


def test_plain_class_folder_as_val_split(synth_src, tmp_path):
    out = str(tmp_path / "v")
    prepare(PrepareConfig(os.path.join(synth_src, "val"), out, split="val", size=32, workers=1), **QUIET)
    m = manifest(out)
    assert list(m["splits"]) == ["val"] and m["splits"]["val"]["count"] == 8 and m["stats"] is None
    assert not os.path.exists(os.path.join(out, "stats"))


def test_val_class_unknown_to_train_is_an_error(synth_src, tmp_path):
    src = tmp_path / "s"
    shutil.copytree(synth_src, src)
    os.rename(src / "val" / sorted(os.listdir(src / "val"))[0], src / "val" / "zz_mystery")
    with pytest.raises(ImgprepError, match="zz_mystery"):
        prepare(PrepareConfig(str(src), str(tmp_path / "o")), **QUIET)
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize(
    "setup,match",
    [
        ("missing", "no such folder"),
        ("empty", "empty"),
        ("no_classes", "no class folders"),
        ("file", "not a folder"),
        ("no_files", "hold no files"),
    ],
)
def test_bad_sources(tmp_path, setup, match):
    src = tmp_path / "src"
    if setup == "empty":
        src.mkdir()
    elif setup == "no_classes":
        src.mkdir()
        (src / "a.jpg").write_bytes(b"x")
    elif setup == "file":
        src.write_text("x")
    elif setup == "no_files":
        (src / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ImgprepError, match=match):
        prepare(PrepareConfig(str(src), str(tmp_path / "out")), **QUIET)
    assert not os.path.exists(tmp_path / "out")


def test_foreign_non_empty_out_refused(synth_src, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "thesis.tex").write_text("precious")
    with pytest.raises(ImgprepError, match="not empty"):
        prepare(PrepareConfig(synth_src, str(tmp_path / "o")), **QUIET)
    assert os.listdir(tmp_path / "o") == ["thesis.tex"]


def test_an_out_whose_manifest_is_not_ours_is_one_line(synth_src, tmp_path):
    import json as _json

    from imgprep.errors import ImgprepError

    for i, manifest in enumerate(({"config": None}, {"config": {"a": 1}}, [1, 2])):
        out = tmp_path / f"o{i}"
        out.mkdir()
        (out / "manifest.json").write_text(_json.dumps(manifest))
        with pytest.raises(ImgprepError, match="not an imgprep dataset's; choose an empty or new OUT"):
            prepare(PrepareConfig(synth_src, str(out), size=32, workers=1), progress=False, log=lambda s: None)


def test_one_scratch_over_a_run_of_odd_images_gives_each_images_bytes():
    """A worker reuses one `Scratch` for its images' decode, resize and encode arrays: over a run
    of every header kind, sizes that grow and shrink, a shrink of 2x or more (the area resize)
    and an enlargement, each image's JPEG and stored pixels equal those made without it, and the
    arrays are the previous image's memory."""
    from test_codec import _jpegs_of_every_header

    from helpers import jpeg_bytes, smooth_rgb
    from imgprep.errors import DecodeError
    from imgprep.geometry import Scratch

    run = list(_jpegs_of_every_header().items())
    run += [(f"plain_{h}x{w}", jpeg_bytes(smooth_rgb(h, w, 7))) for h, w in [(700, 560), (300, 420), (130, 90)]]
    run += run[:4]  # the first ones again, after larger images
    scratch, made, previous = Scratch(), 0, None
    for name, data in run:
        try:
            want = process_image(data, f"{name}.jpg", 64, 95)
        except DecodeError:
            with pytest.raises(DecodeError):
                process_image(data, f"{name}.jpg", 64, 95, scratch=scratch)
            continue
        jpeg, pixels, img = process_image(data, f"{name}.jpg", 64, 95, scratch=scratch)
        assert jpeg == want[0], name
        np.testing.assert_array_equal(pixels, want[1])
        assert (img.width, img.height, img.converted) == (want[2].width, want[2].height, want[2].converted)
        if previous is not None:
            assert np.shares_memory(pixels, previous)  # the stored pixels: one array for the run
        previous, made = pixels, made + 1
    assert made >= 12
