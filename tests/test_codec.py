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


def _adobe_rgb_icc() -> bytes:
    """A minimal ICC v2 matrix/TRC profile with Adobe RGB (1998)'s primaries (D50-adapted) and gamma 2.2."""
    import struct

    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    curv = b"curv" + bytes(4) + struct.pack(">IH", 1, 563) + bytes(2)  # gamma 563/256 = 2.199
    text = b"Adobe RGB (1998) test\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.6097, 0.3111, 0.0195)),
        (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)),
        (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)),
        (b"rTRC", curv),
        (b"gTRC", curv),
        (b"bTRC", curv),
    ]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ") + bytes(12)
    header += b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(4)
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


def test_an_embedded_colour_profile_is_converted_to_srgb_and_counted():
    """Adobe RGB pixels read as if sRGB are off by many levels in R and B; converted, they are not."""
    from PIL import ImageCms

    from imgprep.codec import decode_rgb

    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (200, 60, 40)
    rgb[:, 16:32] = (60, 180, 70)
    rgb[:, 32:] = (50, 70, 200)
    icc = _adobe_rgb_icc()
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "PNG", icc_profile=icc)
    img = decode_rgb(b.getvalue(), "x.png")
    assert "icc_profile" in img.converted
    want = ImageCms.profileToProfile(
        Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB")
    )
    assert np.abs(img.pixels.astype(int) - np.asarray(want).astype(int)).max() <= 1
    assert np.abs(img.pixels.astype(int) - rgb.astype(int))[..., [0, 2]].max() >= 10  # it moved R or B
    b = io.BytesIO()  # the same pixels tagged sRGB: unchanged, nothing counted
    Image.fromarray(rgb).save(b, "PNG", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    img = decode_rgb(b.getvalue(), "x.png")
    assert "icc_profile" not in img.converted and np.array_equal(img.pixels, rgb)


def test_animated_images_keep_their_first_frame_and_say_so_and_avif_decodes():
    from imgprep.codec import decode_rgb

    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (30, 200)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:])
    img = decode_rgb(b.getvalue(), "a.gif")
    assert "first_frame" in img.converted and abs(int(img.pixels.mean()) - 30) <= 2
    pytest.importorskip("PIL.AvifImagePlugin")
    b = io.BytesIO()
    try:
        frames[1].save(b, "AVIF")
    except (KeyError, OSError):
        pytest.skip("this Pillow writes no AVIF")
    img = decode_rgb(b.getvalue(), "a.avif")
    assert img.format == "avif" and abs(int(img.pixels.mean()) - 200) <= 4


def _jpegs_of_every_header() -> dict[str, bytes]:
    """JPEGs whose headers differ in what decode_rgb must notice."""
    rgb = smooth_rgb(90, 120, 4)
    out = {"plain": jpeg_bytes(rgb), "gray": jpeg_bytes(rgb[..., 0]), "progressive": jpeg_bytes(rgb, progressive=True)}
    out["subsampled_444"] = jpeg_bytes(rgb, subsampling=0)
    ex = Image.Exif()
    ex[0x0112] = 6
    out["exif_rotated"] = jpeg_bytes(rgb, exif=ex)
    ex1 = Image.Exif()
    ex1[0x010F] = "camera"
    out["exif_no_rotation"] = jpeg_bytes(rgb, exif=ex1)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    plain = out["plain"]  # APP1 with XMP after SOI: Pillow takes the orientation from it too
    app1 = b"http://ns.adobe.com/xap/1.0/\0" + xmp
    out["xmp_rotated"] = plain[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + plain[2:]
    out["icc"] = jpeg_bytes(rgb, icc_profile=_adobe_rgb_icc())
    b = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(b, "JPEG", quality=92)
    out["cmyk"] = b.getvalue()
    im2 = Image.fromarray(rgb[::-1].copy())
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "MPO", save_all=True, append_images=[im2])
    out["mpo"] = b.getvalue()
    out["truncated"] = out["plain"][: len(out["plain"]) // 2]
    out["header_only"] = out["plain"][:300]
    return out


def test_the_plain_jpeg_header_walk_gives_what_pillow_gives(monkeypatch):
    """Where the header walk answers (no EXIF, ICC, multi-picture or Adobe segment) it gives
    Pillow's size and mode; decode_rgb gives the same image, size and notes either way."""
    import imgprep.codec as codec

    jpegs = _jpegs_of_every_header()
    answered = {k for k, d in jpegs.items() if codec.plain_jpeg_size(d) is not None}
    assert answered == {"plain", "gray", "progressive", "subsampled_444", "truncated", "header_only"}
    for k in answered - {"truncated", "header_only"}:
        im = Image.open(io.BytesIO(jpegs[k]))
        assert codec.plain_jpeg_size(jpegs[k]) == (*im.size, {"L": 1, "RGB": 3}[im.mode])
    fast = {}
    for k, d in jpegs.items():
        try:
            fast[k] = decode_rgb(d, "x.jpg", max_pixels=10**8)
        except DecodeError as exc:
            fast[k] = str(exc)
    monkeypatch.setattr(codec, "plain_jpeg_size", lambda data: None)  # every file through Pillow
    for k, d in jpegs.items():
        try:
            slow = decode_rgb(d, "x.jpg", max_pixels=10**8)
        except DecodeError as exc:
            assert fast[k] == str(exc), k
            continue
        a = fast[k]
        assert (a.width, a.height, a.format, a.converted) == (slow.width, slow.height, slow.format, slow.converted), k
        assert np.array_equal(a.pixels, slow.pixels), k


def test_the_header_walk_keeps_the_pixel_limit():
    big = jpeg_bytes(smooth_rgb(300, 400, 1))
    with pytest.raises(DecodeError, match="over the limit"):
        decode_rgb(big, "big.jpg", max_pixels=300 * 400 - 1)
    assert decode_rgb(big, "big.jpg", max_pixels=300 * 400).pixels.shape == (300, 400, 3)
