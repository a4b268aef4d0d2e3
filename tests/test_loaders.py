"""Both loader backends against a NumPy reference of the paper's augmentation."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cli_argv
from imgprep.dataset import DatasetInfo
from imgprep.errors import ImgprepError
from imgprep.loader_base import PAD_LABEL, EpochPlan
from imgprep.loaders import make_loader as _make_loader
from imgprep.shards import iter_samples


def reference_view(image, mean_image, top, left, crop, flip, shift, channel_mean, channel_std):
    """The paper's view in plain NumPy, written here independently of imgprep.augment (which the
    torch fallback runs): window, + lighting shift, - mean-image window, per-channel normalize,
    mirror, HWC -> CHW. image, mean_image: (S, S, 3); returns float32 (3, crop, crop)."""
    x = image[top : top + crop, left : left + crop].astype(np.float64) + np.asarray(shift, np.float64)
    if mean_image is not None:
        x -= mean_image[top : top + crop, left : left + crop]
    x = (x - np.asarray(channel_mean, np.float64)) / np.asarray(channel_std, np.float64)
    if flip:
        x = x[:, ::-1]
    return x.transpose(2, 0, 1).astype(np.float32)


def lighting_scales(eigval):
    return np.sqrt(np.asarray(eigval, np.float64))  # the default scale: the std along each axis


def ten_crop_offsets(size, crop):
    c, e = (size - crop) // 2, size - crop
    return [(c, c), (0, 0), (0, e), (e, 0), (e, e)]  # centre, then the corners; the loader's order


# "dali": the CPU default (one fused numba operator); "dali-ops": the stock operator chain, on the
# CPU; "dali-handover": the GPU's path (uint8 windows + finish.WindowFinisher), on the CPU;
# "torch": the fallback
BACKENDS = ["dali", "dali-ops", "dali-handover", "torch"]
S, CROP = 64, 56  # the `prepared` fixture stores 64x64; crops are 64*224/256


VARIANTS = {  # backend -> how DALI finishes a view
    "dali": dict(cpu_operator="fused", handover="off"),
    "dali-ops": dict(cpu_operator="chain", handover="off"),
    "dali-handover": dict(cpu_operator="chain", handover="on"),
}


def make_loader(root, *args, backend="dali", **kw):
    """`imgprep.loaders.make_loader`, with the DALI variants above."""
    return _make_loader(
        root, *args, backend="torch" if backend == "torch" else "dali", **{**VARIANTS.get(backend, {}), **kw}
    )


def decoded(prepared, split):
    """[(label, uint8 (S, S, 3))] of a split, decoded with Pillow (independent of both backends)."""
    m = json.load(open(os.path.join(prepared, "manifest.json")))
    out = []
    for sh in m["splits"][split]["shards"]:
        for _, c in iter_samples(os.path.join(prepared, sh["path"])):
            out.append((int(c["cls"].decode()), np.asarray(Image.open(io.BytesIO(c["jpg"])).convert("RGB"))))
    return out


@pytest.fixture(scope="module")
def ref(prepared):
    info = DatasetInfo.load(prepared, "train")
    return {
        "train": decoded(prepared, "train"),
        "val": decoded(prepared, "val"),
        "mean": info.mean_image,
        "stats": info.stats,
    }


def collect(loader):
    xs, ys = [], []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[0] == y.shape[0]
        xs.append(x.cpu().numpy())
        ys.append(y.cpu().numpy())
    return np.concatenate(xs), np.concatenate(ys)


def match(views, labels, refs, make_ref, tol):
    """Index of the reference sample each view equals (within tol); checks the label too."""
    cands = [make_ref(img) for _, img in refs]
    found = []
    for v, y in zip(views, labels, strict=True):
        if y < 0:
            continue
        d = [np.abs(v - c).mean() for c in cands]
        i = int(np.argmin(d))
        assert d[i] < tol, f"no reference view within {tol} (best {d[i]:.2f})"
        assert refs[i][0] == y, "label differs from the sample's class"
        found.append(i)
    return found


def match_any(views, labels, refs, make_refs, tol):
    """Like `match` where `make_refs(img)` gives several candidate views of each sample (the windows
    and flips a random augmentation may pick): (sample index, candidate index) of each view."""
    cands = [np.stack(make_refs(img)) for _, img in refs]  # each (k, ...)
    found = []
    for v, y in zip(views, labels, strict=True):
        if y < 0:
            continue
        d = [np.abs(c - v).reshape(len(c), -1).mean(1) for c in cands]
        i = int(np.argmin([x.min() for x in d]))
        assert d[i].min() < tol, f"no reference view within {tol} (best {d[i].min():.2f})"
        assert refs[i][0] == y, "label differs from the sample's class"
        found.append((i, int(np.argmin(d[i]))))
    return found


def centre(img, mean):
    o = (S - CROP) // 2
    return reference_view(img, mean, o, o, CROP, False, np.zeros(3), np.zeros(3), np.ones(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_every_sample_once_with_its_label(prepared, ref, backend):
    loader = make_loader(prepared, "val", 3, "eval", backend=backend, workers=2)
    x, y = collect(loader)
    assert x.shape == (len(loader) * 3, 3, CROP, CROP) and len(loader) == 3  # 8 samples, batches of 3
    assert (y == -1).sum() == 1  # the last batch padded
    found = match(x, y, ref["val"], lambda im: centre(im, ref["mean"]), tol=1.5)
    assert sorted(found) == list(range(8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_disjoint_complete_and_equal_length(prepared, ref, backend):
    seen, lengths = [], set()
    for rank in range(3):
        loader = make_loader(prepared, "train", 12, "eval", backend=backend, rank=rank, world_size=3, workers=1)
        lengths.add(len(loader))
        x, y = collect(loader)
        assert len(y) == len(loader) * 4
        seen += match(x, y, ref["train"], lambda im: centre(im, ref["mean"]), tol=1.5)
    assert len(lengths) == 1
    assert sorted(seen) == list(range(24))  # disjoint and together complete


@pytest.mark.parametrize("backend", BACKENDS)
def test_uneven_ranks_follow_the_epoch_plan(prepared, ref, backend):
    """24 samples over 5 ranks in global batches of 15 (3 per rank): ranks of 4 and 5 samples, 2 batches
    each, the rest padding; each rank reads exactly its range of the epoch's (permuted) shard order."""
    info = DatasetInfo.load(prepared, "train")
    first_of_shard = np.cumsum([0, *info.counts])  # index in `ref` (manifest order) of each shard's first sample
    seen = []
    for rank in range(5):
        loader = make_loader(
            prepared,
            "train",
            15,
            "train",
            backend=backend,
            rank=rank,
            world_size=5,
            workers=1,
            seed=7,
            crop=S,  # the window is the whole stored image; the coin flip is matched either way
            lighting_std=0.0,
        )
        loader.set_epoch(1)
        plan = EpochPlan.make(info, loader.cfg, 1)
        want = [int(first_of_shard[s]) + first + k for s, first, n in plan.segments(info.counts) for k in range(n)]
        x, y = collect(loader)
        assert len(loader) == 2 and len(y) == 6 and len(want) == [4, 5, 5, 5, 5][rank]  # [r*24//5, (r+1)*24//5)
        assert (y == PAD_LABEL).sum() == 6 - len(want)
        found = [i for i, _ in match_any(x, y, ref["train"], lambda im: both_flips(im, ref["mean"]), tol=1.5)]
        assert sorted(found) == sorted(want)
        seen += found
    assert sorted(seen) == list(range(24))  # disjoint and together complete


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_last_batch(prepared, backend):
    loader = make_loader(prepared, "train", 5, "train", backend=backend, last_batch="drop", workers=1)
    x, y = collect(loader)
    assert len(loader) == 4 and len(y) == 20 and (y >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_windows_and_flips_equal_reference_views(prepared, ref, backend):
    """Crops of S - 2 leave 3 x 3 windows and 2 flips: every view equals the reference view of one
    of those 18 (pixel by pixel), and the augmentation uses more than one window and both flips."""
    crop = S - 2
    loader = make_loader(prepared, "train", 8, "train", backend=backend, lighting_std=0.0, crop=crop, workers=1)
    x, y = collect(loader)
    picks = [(top, left, flip) for top in range(3) for left in range(3) for flip in (False, True)]

    def make(im):
        z = np.zeros(3)
        return [reference_view(im, ref["mean"], t, lf, crop, f, z, z, np.ones(3)) for t, lf, f in picks]

    found = match_any(x, y, ref["train"], make, tol=1.0)
    assert sorted(i for i, _ in found) == list(range(24))
    for v, (i, k) in zip(x[y >= 0], found, strict=True):  # up to a small decode tolerance, pixel by pixel
        assert np.abs(v - make(ref["train"][i][1])[k]).max() <= 12
    windows = {picks[k][:2] for _, k in found}
    flips = {picks[k][2] for _, k in found}
    assert len(windows) > 1 and flips == {False, True}


def both_flips(im, mean):
    """The unflipped and flipped reference views of the window covering the whole image (crop = S)."""
    z = np.zeros(3)
    return [reference_view(im, mean, 0, 0, S, f, z, z, np.ones(3)) for f in (False, True)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalize_options(prepared, ref, backend):
    loader = make_loader(prepared, "val", 8, "eval", backend=backend, normalize="mean_image_std", workers=1)
    x, y = collect(loader)
    std = np.asarray(ref["stats"]["std"], np.float32)
    found = match(x * std[:, None, None], y, ref["val"], lambda im: centre(im, ref["mean"]), tol=1.5)
    assert sorted(found) == list(range(8))
    loader = make_loader(prepared, "val", 8, "eval", backend=backend, normalize="channel", workers=1)
    x, y = collect(loader)
    mean = np.asarray(ref["stats"]["mean"], np.float32)
    x = x * std[:, None, None] + mean[:, None, None]
    found = match(x, y, ref["val"], lambda im: centre(im, None), tol=1.5)
    assert sorted(found) == list(range(8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lighting_shift_lies_on_the_pca_axes_with_the_right_spread(prepared, ref, backend):
    sigma = 0.1
    vec, scales = np.asarray(ref["stats"]["eigvec"]), lighting_scales(ref["stats"]["eigval"])
    coefs = []
    for epoch in range(8):
        loader = make_loader(
            prepared,
            "train",
            8,
            "train",
            backend=backend,
            lighting_std=sigma,
            crop=S,  # the window is the whole image; of the two flips, the one that leaves a constant shift
            workers=1,
            seed=11,
        )
        loader.set_epoch(epoch)
        x, y = collect(loader)
        found = match_any(x, y, ref["train"], lambda im: both_flips(im, ref["mean"]), tol=3 * sigma * scales[0] + 1.0)
        for v, (i, _) in zip(x[y >= 0], found, strict=True):
            diffs = [(v - c).reshape(3, -1) for c in both_flips(ref["train"][i][1], ref["mean"])]  # (3, pixels)
            diff = min(diffs, key=lambda d: np.abs(d - np.median(d, axis=1, keepdims=True)).mean())
            shift = np.median(diff, axis=1)
            assert np.abs(diff - shift[:, None]).mean() < 1.0  # one RGB vector added to every pixel
            a = vec @ shift / scales  # coefficients along eigvec[i], in units of the axis' scale
            np.testing.assert_allclose(a @ np.diag(scales) @ vec, shift, atol=1e-6)
            coefs.append(a)
    coefs = np.array(coefs)  # (192, 3)
    assert len(coefs) == 8 * 24
    assert np.all(np.abs(coefs.mean(0)) < 0.04) and np.all((coefs.std(0) > 0.07) & (coefs.std(0) < 0.13))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_views_equal_reference_crops(prepared, ref, backend):
    loader = make_loader(prepared, "val", 4, "ten_crop", backend=backend, workers=1)
    x, y = collect(loader)
    assert x.shape == (8, 10, 3, CROP, CROP)
    offs = ten_crop_offsets(S, CROP)

    def make(im):
        return np.stack(
            [
                reference_view(im, ref["mean"], top, left, CROP, flip, np.zeros(3), np.zeros(3), np.ones(3))
                for flip in (False, True)
                for top, left in offs
            ]
        )

    found = match(x, y, ref["val"], make, tol=1.5)
    assert sorted(found) == list(range(8))
    for v, i in zip(x, found, strict=True):
        r = make(ref["val"][i][1])
        for k in range(10):
            assert np.abs(v[k] - r[k]).mean() < 1.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_order_changes_per_epoch_and_repeats_with_the_seed(prepared, backend):
    def labels(seed, epoch):
        lo = make_loader(prepared, "train", 6, "train", backend=backend, seed=seed, workers=1)
        lo.set_epoch(epoch)
        return collect(lo)

    x0, y0 = labels(1, 0)
    x0b, y0b = labels(1, 0)
    x1, y1 = labels(1, 1)
    assert np.array_equal(y0, y0b) and np.allclose(x0, x0b)
    assert not np.array_equal(y0, y1) and sorted(y0) == sorted(y1)


@pytest.fixture(scope="module")
def identical(tmp_path_factory):
    """12 copies of one finely striped 64x64 image: the mean image equals every image, so a view
    minus its mean-image window is ~0 exactly when both use the same window and the same flip."""
    from imgprep.prepare import PrepareConfig, prepare

    y, x = np.mgrid[0:S, 0:S].astype(np.float64)
    gray = 128 + 60 * np.sin(2 * np.pi * x / 7) + 40 * np.sin(2 * np.pi * (x + 2 * y) / 11)  # no colour: 4:2:0 safe
    img = np.repeat(gray[..., None], 3, -1).astype(np.uint8)
    src = tmp_path_factory.mktemp("identical")
    for i in range(12):
        d = src / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    out = str(src / "out")
    prepare(PrepareConfig(str(src), out, size=S, shard_size=4, workers=1), progress=False, log=lambda s: None)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_windows_and_flips_take_the_mean_image_with_them(identical, backend):
    views = []
    for epoch in range(4):
        loader = make_loader(identical, "train", 6, "train", backend=backend, lighting_std=0.0, workers=1, seed=5)
        loader.set_epoch(epoch)
        views.append(collect(loader)[0])
    x = np.concatenate(views)  # (48, 3, CROP, CROP): random windows and flips of one image, minus the mean
    assert np.abs(x).max() < 12  # JPEG error only; one pixel off or a missed flip gives ~50
    raw = make_loader(identical, "train", 12, "train", backend=backend, lighting_std=0.0, normalize="none", workers=1)
    r = np.concatenate([collect(raw)[0] for _ in range(4)]).reshape(48, -1)  # 4 epochs of the 12 samples
    assert len({tuple(np.round(v[:40] / 20)) for v in r}) > 10  # ...and the windows and flips do vary


def test_bad_loader_arguments(prepared, tmp_path):
    with pytest.raises(ImgprepError, match="mode"):
        make_loader(prepared, mode="nope")
    with pytest.raises(ImgprepError, match="rank"):
        make_loader(prepared, rank=2, world_size=2)
    with pytest.raises(ImgprepError, match="--split 'test': one of train, val"):
        make_loader(prepared, "test")
    with pytest.raises(ImgprepError, match="no manifest"):
        make_loader(str(tmp_path))


def test_gpu_handover_path_equals_the_fused_cpu_operator_on_a_random_epoch(prepared):
    """The GPU's path (uint8 windows, then finish.WindowFinisher), run on the CPU, draws the same
    windows, flips and lighting as the one-pass CPU operator and gives the same values."""
    out = {}
    for backend in ("dali", "dali-handover"):
        lo = make_loader(prepared, "train", 5, "train", backend=backend, workers=1, seed=3, lighting_std=0.3)
        lo.set_epoch(1)
        out[backend] = collect(lo)
    np.testing.assert_array_equal(out["dali"][1], out["dali-handover"][1])
    np.testing.assert_allclose(out["dali"][0], out["dali-handover"][0], rtol=1e-5, atol=1e-4)
    assert np.abs(out["dali"][0]).max() > 10  # real views, not zeros


def test_loader_yields_the_requested_dtype_and_layout(prepared):
    for backend in BACKENDS:
        lo = make_loader(prepared, "val", 4, "eval", backend=backend, workers=1, dtype="bfloat16", channels_last=True)
        x, y = next(iter(lo))
        assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last), backend


HIDE_DALI = "import sys; sys.modules['nvidia.dali'] = None; from imgprep.cli.main import main; main()"


def _cli_without_dali(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", HIDE_DALI, *args], capture_output=True, text=True, timeout=300)


def test_auto_backend_is_dali_where_it_imports_and_torch_where_it_does_not(prepared):
    import subprocess

    args = ["load", prepared, "--split", "val", "--batch-size", "4", "--steps", "1", "--workers", "1", "--json"]
    with_dali = subprocess.run(cli_argv(*args), capture_output=True, text=True)
    r = json.loads(with_dali.stdout)
    assert r["backend"] == "dali", with_dali.stderr
    assert r["first_batch_seconds"] > 0 and r["import_seconds"] > 0  # the loader's start, apart from imports
    hidden = _cli_without_dali(*args)
    assert hidden.returncode == 0, hidden.stderr
    r = json.loads(hidden.stdout)
    assert r["backend"] == "torch" and r["images"] == 4
    explicit = _cli_without_dali(*args, "--backend", "dali")
    assert explicit.returncode != 0 and "Traceback" not in explicit.stderr
    assert "backend 'dali' needs NVIDIA DALI" in explicit.stderr and len(explicit.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_workers_beyond_the_cores_are_bounded_with_one_note(prepared, backend, capfd):
    """--workers 10000 starts no more processes (torch) or threads (DALI) than there are cores."""
    from imgprep import _mp

    _mp._NOTED.clear()
    lo = make_loader(prepared, "train", 5, "train", backend=backend, workers=10000)
    lo2 = make_loader(prepared, "train", 5, "train", backend=backend, workers=10000)
    used = lo.threads if backend == "dali" else lo.workers
    assert used == (lo2.threads if backend == "dali" else lo2.workers) == _mp.cpu_count()
    next(iter(lo))
    err = capfd.readouterr().err.strip().splitlines()
    assert [x for x in err if x.startswith("note:")] == [
        f"note: --workers 10000 is more than the {_mp.cpu_count()} cores here; using {_mp.cpu_count()}"
    ]


def test_a_dataset_and_run_folder_whose_names_are_not_utf8(prepared128, tmp_path):
    """A folder name with a Latin-1 byte: auto reads it with the torch backend (DALI takes UTF-8
    paths only), an explicit dali is one line, and train runs into such a RUN_DIR (TensorBoard,
    which cannot write there, is left out with a note)."""
    import shutil

    from imgprep.trainer.config import TrainConfig
    from imgprep.trainer.train import train

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/donn\xe9es")
    shutil.copytree(prepared128, odd)
    lo = _make_loader(odd, "train", 5, "train", backend="auto", workers=1)
    assert lo.cfg.backend == "torch" and sum(1 for _ in lo) == len(lo)
    with pytest.raises(ImgprepError, match="DALI cannot open paths that are not UTF-8"):
        make_loader(odd, "train", 5, "train", backend="dali", workers=1)
    run_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xe9")
    cfg = TrainConfig(odd, run_dir, epochs=1, batch_size=5, width_mult=0.125, init="kaiming", workers=1)
    last = train(cfg, progress=False, log=lambda s: None)
    assert last["epoch"] == 1 and os.path.exists(os.path.join(run_dir, "checkpoint.pt"))


@pytest.mark.parametrize("mode", ["train", "eval", "ten_crop"])
def test_a_dali_loader_builds_its_pipeline_once_and_each_epoch_is_its_own(prepared, monkeypatch, mode):
    """The pipeline is fed (samples, order and random draws made per epoch from seed, epoch and
    rank): one build serves every epoch, including after an epoch stopped inside, and epoch k of a
    long-lived (and warmed-up) loader gives the batches, padding included, that a fresh loader set
    to epoch k gives."""
    from imgprep import dali_loader, reader

    builds, parsed = [], []
    real = dali_loader.build_pipeline
    monkeypatch.setattr(dali_loader, "build_pipeline", lambda *a, **kw: builds.append(1) or real(*a, **kw))

    class Counted(reader.ShardIndex):
        def __init__(self, path):
            parsed.append(path)
            super().__init__(path)

    monkeypatch.setattr(reader, "ShardIndex", Counted)
    split = "train" if mode == "train" else "val"  # val: 8 samples, 3 batches, 1 padded
    lo = make_loader(prepared, split, 3, mode, backend="dali", workers=1)
    assert lo.warm_up() > 0 and len(builds) == 1  # the first epoch's start-up, done before it
    epochs = [collect(lo) for _ in range(3)]
    next(iter(lo))  # epoch 3 stopped after one batch...
    stopped = collect(lo)  # ...and run again whole
    assert len(builds) == 1
    assert sorted(parsed) == sorted(set(parsed)) and len(parsed) == len(lo.info.shards)  # each index once
    for k, (images, labels) in enumerate([*epochs, stopped]):
        fresh = make_loader(prepared, split, 3, mode, backend="dali", workers=1)
        fresh.set_epoch(k)
        want = collect(fresh)
        np.testing.assert_array_equal(labels, want[1])
        np.testing.assert_array_equal(images, want[0])
    if mode == "train":
        assert not np.array_equal(epochs[0][1], epochs[1][1])  # a new order every epoch


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dali_feeds_are_the_epoch_plan_through_the_shuffle_buffer(prepared, mode):
    """The DALI backend shuffles positions and reads each batch as it leaves the buffer: its feeds
    hold, in order, the samples of the documented scheme (the epoch's segments through
    `buffer_shuffle` seeded by (seed, epoch, rank, 0)), the last batch padded with its last."""
    from imgprep.reader import LocalShards, buffer_shuffle, epoch_samples

    lo = make_loader(prepared, "train", 4, mode, backend="dali", workers=1, seed=3, shuffle_buffer=7)
    lo.set_epoch(2)
    plan = lo.plan()
    stream = epoch_samples(plan.segments(lo.info.counts), LocalShards(lo.info.shards, {}))
    if mode == "train":
        stream = buffer_shuffle(stream, 7, np.random.default_rng([3, 2, 0, 0]), initial=8)
    want = [(jpg, y) for _, jpg, y, _ in stream]
    got = []
    for feed, valid in lo._inputs(plan, LocalShards(lo.info.shards, {})):
        jpgs = feed["jpg"]
        assert isinstance(jpgs, np.ndarray) and jpgs.shape[0] == 4  # one dense tensor for the CPU decoder
        rows = [bytes(r) for r in jpgs]
        for k in range(valid):
            assert rows[k].startswith(want[len(got)][0]) and not rows[k][len(want[len(got)][0]) :].strip(b"\0")
            got.append((want[len(got)][0], int(feed["label"][k])))
        assert rows[valid:] == [rows[valid - 1]] * (4 - valid)
    assert got == want and len(got) == lo.info.total


def test_the_fused_cpu_graph_is_fed_its_parameters_and_the_others_their_draws(prepared):
    """Train mode on the fused CPU operator: the parameters and the decoder's window come fed (no
    small DALI operators per sample); the operator chain and the hand-over take the draws."""
    fused = make_loader(prepared, "train", 4, backend="dali", workers=1)
    assert fused._pipeline(False).imgprep_feeds == {"jpg", "label", "params", "crop_x", "crop_y"}
    for backend, handover in (("dali-ops", False), ("dali-handover", True)):
        lo = make_loader(prepared, "train", 4, backend=backend, workers=1)
        assert lo._pipeline(handover).imgprep_feeds == {"jpg", "label", "top", "left", "mirror", "shift"}
    ev = make_loader(prepared, "val", 4, "eval", backend="dali", workers=1)
    assert ev._pipeline(False).imgprep_feeds == {"jpg", "label", "params"}  # the centre window's, fixed
    ev_chain = make_loader(prepared, "val", 4, "eval", backend="dali-ops", workers=1)
    assert ev_chain._pipeline(False).imgprep_feeds == {"jpg", "label"}


def test_jpegs_fed_as_exact_length_views_give_the_dense_feeds_batches(prepared):
    """The GPU's decoders get each JPEG as an exact-length view of the batch buffer, the CPU's one
    dense tensor with zeros after each JPEG: the same batch either way (run here on the CPU)."""
    from imgprep.reader import BatchReader

    dense = make_loader(prepared, "train", 4, backend="dali", workers=1, seed=1)
    views = make_loader(prepared, "train", 4, backend="dali", workers=1, seed=1)
    views._batch_reader = BatchReader(4, views.cfg.prefetch + 2, dense=False)
    for epoch in range(2):
        dense.set_epoch(epoch)
        views.set_epoch(epoch)
        a, b = collect(dense), collect(views)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])


def test_dali_host_buffers_come_from_dalis_pool_unless_the_user_chose(prepared, monkeypatch):
    """A batch-sized host buffer (a CPU batch of decoded windows: 19 MB at 128 x 224 px) is under
    DALI's default malloc threshold (32 MB), and glibc maps it afresh for every batch. The loader
    sets DALI's threshold to 2 MB before its pipeline is built, unless the user set it or glibc's
    mmap settings (from which DALI derives it): a user's value stays as it is."""
    from imgprep import dali_loader

    assert dali_loader.host_pool_setting({}) == "2M"
    for key in ("DALI_MALLOC_POOL_THRESHOLD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_"):
        assert dali_loader.host_pool_setting({key: "0"}) is None
    for key in ("DALI_MALLOC_POOL_THRESHOLD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_"):
        monkeypatch.delenv(key, raising=False)
    collect(make_loader(prepared, "train", 4, backend="dali", workers=1))
    assert os.environ["DALI_MALLOC_POOL_THRESHOLD"] == "2M"
    monkeypatch.setenv("DALI_MALLOC_POOL_THRESHOLD", "64k")
    collect(make_loader(prepared, "train", 4, backend="dali", workers=1))
    assert os.environ["DALI_MALLOC_POOL_THRESHOLD"] == "64k"
