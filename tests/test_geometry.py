"""Geometry of the stored image against a plain reference written here."""

import numpy as np
import pytest
from PIL import Image

from helpers import smooth_rgb
from imgprep.geometry import antialias_sigma, center_crop_offset, resize_center_crop, resize_target, source_window


@pytest.mark.parametrize(
    "h,w,expect",
    [
        (375, 500, (256, 341)),
        (500, 375, (341, 256)),
        (256, 256, (256, 256)),
        (2, 3, (256, 384)),
        (90, 2400, (256, 6827)),
        (2400, 90, (6827, 256)),
        (1, 1, (256, 256)),
    ],
)
def test_resize_target_shorter_side_exact(h, w, expect):
    assert resize_target(h, w, 256) == expect
    rh, rw = resize_target(h, w, 256)
    assert min(rh, rw) == 256
    assert abs(max(rh, rw) / 256 - max(h, w) / min(h, w)) <= 0.5 / 256 + 1e-9


def test_center_crop_offset():
    assert center_crop_offset(256, 341, 256) == (0, 42)
    assert center_crop_offset(341, 256, 256) == (42, 0)
    assert center_crop_offset(256, 256, 256) == (0, 0)


def test_source_window_is_central_and_square_in_scaled_units():
    x0, y0, x1, y1 = source_window(375, 500, 256)
    assert (y0, y1) == (0, 375)
    assert abs((x0 + x1) / 2 - 250) < 1.0  # centred up to the crop's integer offset
    assert abs((x1 - x0) - 256 * 500 / 341) < 1e-9  # 256 output pixels at the resize scale 341/500


def reference(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the whole image with Pillow (antialiased bilinear), then crop the centre."""
    h, w = img.shape[:2]
    rh, rw = resize_target(h, w, size)
    r = np.asarray(Image.fromarray(img).resize((rw, rh), Image.BILINEAR))
    top, left = center_crop_offset(rh, rw, size)
    return r[top : top + size, left : left + size]


@pytest.mark.parametrize("h,w", [(375, 500), (500, 375), (900, 1200), (1800, 600), (200, 150), (256, 256)])
def test_resize_center_crop_matches_reference(h, w):
    img = smooth_rgb(h, w, seed=h + w)
    out = resize_center_crop(img, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    diff = np.abs(out.astype(int) - reference(img, 256).astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6


def test_marker_lands_where_the_geometry_says():
    h, w, size = 400, 1000, 100
    img = np.zeros((h, w, 3), np.uint8)
    img[190:210, 590:610] = 255  # a bright square centred at (200, 600)
    out = resize_center_crop(img, size).astype(float)[..., 0]
    ys, xs = np.nonzero(out > 64)
    s = size / h  # scale
    rw = round(w * s)
    left = (rw - size) // 2
    assert abs(ys.mean() - 200 * s + 0.5) < 1.0
    assert abs(xs.mean() - (600 * s - left) + 0.5) < 1.0


def test_tiny_and_extreme_images():
    for h, w in [(2, 3), (3, 2), (90, 2400), (2400, 90), (1, 1)]:
        img = smooth_rgb(h, w)
        out = resize_center_crop(img, 256)
        assert out.shape == (256, 256, 3)
    # an extreme strip keeps its central part: a vertical bar at the strip's centre stays centred
    img = np.zeros((90, 2400, 3), np.uint8)
    img[:, 1195:1205] = 255
    out = resize_center_crop(img, 256)[..., 0]
    xs = np.nonzero(out[128] > 64)[0]
    assert abs(xs.mean() - 127.5) < 2


def test_antialias_suppresses_aliasing():
    # 1-pixel stripes shrunk 4x must come out as flat grey, not a moire pattern.
    img = np.zeros((1024, 1024, 3), np.uint8)
    img[:, ::2] = 255
    out = resize_center_crop(img, 256).astype(float)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 3


def test_antialias_sigma():
    assert antialias_sigma(0.5) == 0.0 and antialias_sigma(1.0) == 0.0
    assert antialias_sigma(3.0) == pytest.approx(1.0)


def test_scratch_reuses_an_array_while_it_fits_and_keeps_none_over_its_bound():
    from imgprep.geometry import Scratch

    s = Scratch()
    a = s.get("x", (10, 10, 3))
    assert a.shape == (10, 10, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.shares_memory(a, s.get("x", (8, 10, 3)))  # smaller: the same memory
    assert np.shares_memory(a, s.get("x", (11, 10, 3)))  # a little larger: the room left for it
    assert not np.shares_memory(a, s.get("x", (20, 20, 3)))  # larger still: a new array, kept from then on
    assert not np.shares_memory(a, s.get("y", (10, 10, 3)))  # each name its own
    s.KEEP_BYTES = 1000
    big = s.get("z", (20, 20, 3))
    assert big.shape == (20, 20, 3) and not np.shares_memory(big, s.get("z", (20, 20, 3)))  # over the bound: not kept
