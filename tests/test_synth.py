"""The synthetic set: sizes like ImageNet's, deterministic, and learnable from content."""

import os

import numpy as np
import pytest
from PIL import Image

from imgprep.errors import ImgprepError
from imgprep.synth import SynthConfig, class_names, synth_image, synthesize


def test_sizes_and_aspects_in_range():
    rng = np.random.default_rng(0)
    for i in range(40):
        img = synth_image(rng, i % 5)
        h, w = img.shape[:2]
        assert 150 <= min(h, w) <= 600 and 0.5 - 0.01 <= w / h <= 2.0 + 0.01 and img.dtype == np.uint8


def test_deterministic_and_layout(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out, workers in ((a, 1), (b, 2)):
        synthesize(SynthConfig(out, classes=3, per_class=2, val_per_class=1, min_side=40, max_side=60), workers=workers)
    names = class_names(3)
    assert sorted(os.listdir(os.path.join(a, "train"))) == names
    for split, n in (("train", 2), ("val", 1)):
        for c in names:
            files = sorted(os.listdir(os.path.join(a, split, c)))
            assert len(files) == n
            for f in files:
                assert (
                    open(os.path.join(a, split, c, f), "rb").read() == open(os.path.join(b, split, c, f), "rb").read()
                )


def test_jpeg_sizes_like_photos(tmp_path):
    synthesize(SynthConfig(str(tmp_path / "s"), classes=2, per_class=4, val_per_class=0, seed=2))
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "s") for f in fs]
    bpp = [os.path.getsize(f) / np.prod(Image.open(f).size) for f in files]
    assert 0.25 < np.median(bpp) < 1.5  # ImageNet photos: ~0.3-1 byte per pixel


def test_classes_are_learnable_from_content():
    # nearest class-centroid on a colour histogram of the central region beats chance by far
    rng = np.random.default_rng(5)

    def feat(img):
        h, w = img.shape[:2]
        c = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3) // 64
        return np.bincount(c[:, 0] * 16 + c[:, 1] * 4 + c[:, 2], minlength=64) / len(c)

    n_cls = 6
    train = [(feat(synth_image(rng, c, 60, 120)), c) for c in range(n_cls) for _ in range(8)]
    test = [(feat(synth_image(rng, c, 60, 120)), c) for c in range(n_cls) for _ in range(5)]
    cent = np.stack([np.mean([f for f, c in train if c == k], 0) for k in range(n_cls)])
    acc = np.mean([np.argmin(((cent - f) ** 2).sum(1)) == c for f, c in test])
    assert acc > 0.6  # chance is 1/6


def test_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    with pytest.raises(ImgprepError):
        synthesize(SynthConfig(str(tmp_path / "x")))
