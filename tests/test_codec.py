"""Decoding every odd kind of file ImageNet holds, against Pillow as the reference."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import jpeg_bytes, smooth_rgb, write_odd_files
from imgprep.codec import apply_orientation, decode_rgb, encode_jpeg, sniff_format
from imgprep.errors import DecodeError, NotAnImage


def pil_reference(data: bytes) -> np.ndarray:
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if im.mode in ("I;16", "I"):
        return np.repeat((np.asarray(im).astype(np.int64) >> 8).astype(np.uint8)[..., None], 3, 2)
    return np.asarray(im.convert("RGB"))


def test_sniff_format():
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"GIF89a") == "gif"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"hello") is None and sniff_format(b"") is None


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    files = write_odd_files(str(d))
    return {k: (n, (d / n).read_bytes()) for k, n in files.items()}


@pytest.mark.parametrize(
    "kind", ["grayscale", "cmyk", "png_as_jpeg", "alpha", "palette", "16bit", "progressive", "exif_rotated"]
)
def test_odd_kinds_decode_to_rgb(odd, kind):
    name, data = odd[kind]
    img = decode_rgb(data, name)
    assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 3 and img.pixels.shape[2] == 3
    ref = pil_reference(data)
    assert img.pixels.shape == ref.shape
    assert np.abs(img.pixels.astype(int) - ref.astype(int)).max() <= 1
    expect_tag = {"progressive": None}.get(kind, kind)
    if expect_tag:
        assert expect_tag in img.converted
    assert (img.width, img.height) == (ref.shape[1], ref.shape[0])


def test_exif_rotation_swaps_reported_size(odd):
    name, data = odd["exif_rotated"]
    img = decode_rgb(data, name)
    assert (img.width, img.height) == (90, 120)  # stored 120x90, orientation 6


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    rgb = smooth_rgb(30, 50, seed=orientation)
    rgb[3:6, 5:9] = [255, 0, 0]  # asymmetric marker
    ex = Image.Exif()
    ex[0x0112] = orientation
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "PNG", exif=ex)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(b.getvalue()))).convert("RGB"))
    assert np.array_equal(apply_orientation(rgb, orientation), ref)
    # and through the JPEG fast path
    data = jpeg_bytes(rgb, quality=95, exif=ex)
    assert np.abs(decode_rgb(data, "x.jpg").pixels.astype(int) - pil_reference(data).astype(int)).max() <= 1


@pytest.mark.parametrize(
    "kind,match", [("truncated", "truncated"), ("empty", "empty"), ("not_image_ext", "not an image")]
)
def test_undecodable_files_raise_decode_error(odd, kind, match):
    name, data = odd[kind]
    with pytest.raises(DecodeError, match=match):
        decode_rgb(data, name)


def test_non_image_file_is_not_an_image(odd):
    name, data = odd["non_image"]
    with pytest.raises(NotAnImage):
        decode_rgb(data, name)


def test_large_jpeg_uses_dct_reduction_but_keeps_enough_pixels():
    rgb = smooth_rgb(1200, 1600)
    img = decode_rgb(jpeg_bytes(rgb), "big.jpg", min_side=256)
    assert (img.width, img.height) == (1600, 1200)
    assert min(img.pixels.shape[:2]) >= 256 and img.pixels.shape[0] < 1200  # reduced, not below 256


def test_encode_jpeg_roundtrip():
    rgb = smooth_rgb(64, 64)
    data = encode_jpeg(rgb, 95)
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb.astype(int)).mean() < 2
