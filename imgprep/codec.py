"""Decoding whatever ImageNet holds into RGB uint8, and encoding the stored JPEG.

The I/O edge of the per-image work. Formats are recognised by content (magic bytes), never by the
file name: ImageNet has a PNG saved as `.JPEG`, CMYK and grayscale JPEGs, and users add more.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .constants import MAX_PIXELS
from .errors import DecodeError, NotAnImage
from .geometry import Scratch

__all__ = ["sniff_format", "DecodedImage", "decode_rgb", "encode_jpeg", "apply_orientation", "IMAGE_EXTENSIONS"]

# Extensions that promise an image: such a file that is not one is rejected (listed), not skipped.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .tif .tiff .webp .ppm .pgm .pbm .pnm .j2k .jp2 .avif .heic .heif".split()  # noqa: SIM905
)

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
)


def sniff_format(head: bytes) -> str | None:
    """Image format of a file from its first bytes, or None when it is no image format we know."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "heif"  # decoded where the installed Pillow has a HEIF plugin, else a reject that says so
    return None


_EXT_FORMAT = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".jfif": "jpeg",
    ".png": "png",
    ".gif": "gif",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
    ".avif": "avif",
}


@dataclass
class DecodedImage:
    """RGB pixels plus what had to be converted to get them."""

    pixels: np.ndarray  # uint8 (H, W, 3) RGB, EXIF orientation applied, possibly DCT-reduced
    width: int  # original width, after EXIF orientation
    height: int  # original height, after EXIF orientation
    format: str  # content format: jpeg, png, ...
    converted: list[str] = field(default_factory=list)  # cmyk, grayscale, palette, alpha, ...


_ROTATING = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to (H, W, C) pixels, as Pillow's exif_transpose does."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _fast_jpeg(data: bytes, out: np.ndarray | None = None) -> np.ndarray | None:
    """Full-size RGB decode of a plain (YCbCr or gray) JPEG with libjpeg-turbo straight into
    numpy (into `out`, uint8 (H, W, 3) of the header's size, where given); None when the decoder
    reports any problem, so that Pillow decides."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        return simplejpeg.decode_jpeg(data, "RGB", strict=True, buffer=out)
    except ValueError:
        return None


# Start-of-frame markers of the processes libjpeg-turbo decodes (baseline, extended, progressive)
_SOF = {0xC0, 0xC1, 0xC2}
# before the frame header, these leave the image to Pillow: other coding processes (lossless,
# hierarchical, arithmetic), a scan, markers without a length, EXIF or XMP (APP1: Pillow takes
# the orientation from either), an ICC profile or multi-picture index (APP2), Adobe's colour
# transform (APP14, CMYK/YCCK)
_PILLOW_DECIDES = {0x01, 0xC3, *range(0xC5, 0xDB), 0xE1, 0xE2, 0xEE}


def plain_jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of a JPEG whose header holds nothing Pillow would act on: no
    EXIF or XMP (orientation), no APP2 (ICC profile, multi-picture), no Adobe APP14 (CMYK, transforms),
    1 or 3 components; None for any other JPEG, or a header that does not parse, which Pillow
    then reads. A walk over the segments before the frame header: microseconds, where opening
    the file with Pillow for the same facts took a tenth of a worker's time per image."""
    n, i = len(data), 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        if marker in _SOF:
            if length < 8:
                return None
            h, w, comps = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8], data[i + 9]
            return (w, h, comps) if w and h and comps in (1, 3) else None
        if marker in _PILLOW_DECIDES:
            return None
        i += 2 + length
    return None


def _open(data: bytes, max_pixels: int | None):
    """Pillow's lazy open (header only), refusing an image over `max_pixels` before any decoding.
    Pillow's own bomb warning is silenced: this limit is the one that applies."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            im = None
    if im is None or (max_pixels is not None and im.size[0] * im.size[1] > max_pixels):
        size = f"{im.size[0]}x{im.size[1]} ({im.size[0] * im.size[1]:,} pixels)" if im else "its pixel count"
        raise DecodeError(f"image of {size} is over the limit of {max_pixels or MAX_PIXELS:,} pixels (--max-pixels)")
    return im


def decode_rgb(
    data: bytes, name: str = "", min_side: int = 0, max_pixels: int | None = MAX_PIXELS, scratch: Scratch | None = None
) -> DecodedImage:
    """Decode image bytes into RGB uint8, applying EXIF orientation.

    Args:
        data: the file's bytes.
        name: the file name, only to notice a content/extension mismatch (PNG saved as .JPEG).
        min_side: when > 0 a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) as
            long as its shorter side stays >= min_side; a cheap and properly filtered reduction.
        max_pixels: an image with more pixels (read from its header) is refused before decoding:
            it bounds the memory one image can take. None: no limit of ours.
        scratch: where libjpeg-turbo's decode writes its pixels (valid until the scratch's next use).
    Returns:
        DecodedImage.
    Raises:
        NotAnImage: the content is no image format (and the name does not claim one).
        DecodeError: an image that cannot be decoded (empty, truncated, corrupt).
    """
    from PIL import ImageOps

    fmt = sniff_format(data[:16])
    ext = os.path.splitext(name)[1].lower()
    if fmt is None:
        if not data:
            raise DecodeError("empty file")
        if ext in IMAGE_EXTENSIONS:
            raise DecodeError("not an image: content matches no known image format")
        raise NotAnImage("not an image")
    converted: list[str] = []
    if ext in _EXT_FORMAT and _EXT_FORMAT[ext] != fmt:
        converted.append(f"{fmt}_as_{_EXT_FORMAT[ext]}")
    plain = plain_jpeg_size(data) if fmt == "jpeg" and max_pixels is not None else None
    tried = False  # the fast decode was tried (its result in `fast`): not run twice on one file
    if plain is not None and plain[0] * plain[1] <= max_pixels and (min_side <= 0 or min(plain[:2]) < 2 * min_side):
        w0, h0, comps = plain  # what Pillow would find, without opening the file with it
        out = scratch.get("decoded", (h0, w0, 3)) if scratch is not None else None
        fast, tried = _fast_jpeg(data, out), True  # None: the decoder saw a problem, and Pillow decides below
        if fast is not None and fast.shape[:2] == (h0, w0):
            return DecodedImage(fast, w0, h0, fmt, converted + ["grayscale"] * (comps == 1))
    try:
        im = _open(data, max_pixels)
        orientation = im.getexif().get(0x0112, 1) if fmt in ("jpeg", "tiff", "png", "webp") else 1
        w0, h0 = im.size
        if orientation in _ROTATING:
            w0, h0 = h0, w0
        short = min(im.size)
        pixels = None
        if getattr(im, "n_frames", 1) > 1:  # animated GIF/WebP, multi-page TIFF: the first frame is kept
            converted.append("first_frame")
        icc = im.info.get("icc_profile")
        if fmt == "jpeg" and im.mode in ("RGB", "L") and not icc and (min_side <= 0 or short < 2 * min_side):
            out = scratch.get("decoded", (im.size[1], im.size[0], 3)) if scratch is not None and not tried else None
            pixels = fast if tried else _fast_jpeg(data, out)
        if pixels is not None:
            if im.mode == "L":
                converted.append("grayscale")
            if orientation not in (None, 1):
                pixels = np.ascontiguousarray(apply_orientation(pixels, orientation))
                converted.append("exif_rotated")
            return DecodedImage(pixels, w0, h0, fmt, converted)
        if fmt == "jpeg" and min_side > 0:
            # draft() picks the largest DCT reduction (1/2, 1/4, 1/8) keeping both sides >= the request.
            req = max(1, min_side * im.size[0] // short), max(1, min_side * im.size[1] // short)
            im.draft(None, req)
        im.load()
        if orientation not in (None, 1):
            im = ImageOps.exif_transpose(im)
            converted.append("exif_rotated")
        if icc:
            im = _to_srgb(im, icc, converted)
        pixels = _to_rgb(im, converted)
    except DecodeError:
        raise
    except Exception as exc:  # PIL raises many types for broken files; all mean "cannot decode"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DecodeError(f"cannot decode {fmt}: {msg}") from None
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise DecodeError("image has no pixels")
    return DecodedImage(pixels, w0, h0, fmt, converted)


_SRGB_TRANSFORMS: dict = {}  # (profile bytes' hash, mode) -> an ImageCms transform, or None for sRGB itself


def _to_srgb(im, icc: bytes, converted: list[str]):
    """`im` converted from its embedded colour profile (Adobe RGB, a camera's, a CMYK press profile)
    to sRGB, as a colour-managed viewer shows it; noted as `icc_profile`. An sRGB profile changes
    nothing; a profile that cannot be read is ignored (`icc_unreadable`). Transforms are cached."""
    import hashlib

    from PIL import ImageCms

    if im.mode not in ("RGB", "CMYK", "L"):
        return im
    key = (hashlib.sha1(icc).digest(), im.mode)
    if key not in _SRGB_TRANSFORMS:
        if len(_SRGB_TRANSFORMS) > 64:
            _SRGB_TRANSFORMS.clear()
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if "srgb" in ImageCms.getProfileDescription(src).lower().replace(" ", ""):
                _SRGB_TRANSFORMS[key] = None
            else:
                dst = ImageCms.createProfile("sRGB")
                _SRGB_TRANSFORMS[key] = ImageCms.buildTransform(src, dst, im.mode, "RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            _SRGB_TRANSFORMS[key] = "unreadable"
    t = _SRGB_TRANSFORMS[key]
    if t is None:
        return im
    if t == "unreadable":
        converted.append("icc_unreadable")
        return im
    converted.append("icc_profile")
    if im.mode == "CMYK":
        converted.append("cmyk")
    elif im.mode == "L":
        converted.append("grayscale")
    return ImageCms.applyTransform(im, t)


def _to_rgb(im, converted: list[str]) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8 (H, W, 3), noting the conversion."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)  # uint16 (I;16*) or int32 (I): no wider copy, this can be a large image
        if mode != "I" or a.max(initial=0) > 255:
            a = a >> 8  # 16-bit range to 8 bits
        converted.append("16bit")
        g = np.clip(a, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "F":
        converted.append("float")
        g = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    tag = {
        "L": "grayscale",
        "1": "grayscale",
        "LA": "grayscale",
        "CMYK": "cmyk",
        "P": "palette",
        "PA": "palette",
        "RGBA": "alpha",
        "RGBX": "alpha",
        "YCbCr": "ycbcr",
        "LAB": "lab",
        "HSV": "hsv",
    }.get(mode, mode.lower())
    converted.append(tag)
    if mode == "LA":
        im = im.convert("L")
    return np.asarray(im.convert("RGB"))


def encode_jpeg(rgb: np.ndarray, quality: int, scratch: Scratch | None = None) -> bytes:
    """Encode RGB uint8 (H, W, 3) as a baseline JPEG (4:2:0, libjpeg-turbo via OpenCV); its BGR
    copy in `scratch` where given."""
    import cv2

    # cvtColor to a contiguous BGR copy: 0.25 ms for 256x256, where imencode of the reversed view
    # took 0.84 ms (its own conversion of a strided array); the same pixels, so the same bytes
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=scratch.get("bgr", rgb.shape) if scratch is not None else None)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DecodeError("JPEG encoding failed")
    return buf.tobytes()
