"""Helpers shared by the tests: small synthetic images, byte-for-byte tree comparisons, the CLI's argv."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
from PIL import Image


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 image (gradients + low-frequency blobs): resampling filters agree on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.28)
        img[..., c] = 128 + 90 * np.sin(2 * np.pi * (fx * x / w + fy * y / h) + ph)
    return img.clip(0, 255).astype(np.uint8)


def jpeg_bytes(img: np.ndarray, quality: int = 92, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, "JPEG", quality=quality, **kw)
    return b.getvalue()


def write_odd_files(class_dir: str, seed: int = 0) -> dict[str, str]:
    """Write one file of each odd kind into class_dir. Returns {kind: file name}."""
    os.makedirs(class_dir, exist_ok=True)
    rgb = smooth_rgb(90, 120, seed)
    files = {}

    def put(kind, name, data):
        with open(os.path.join(class_dir, name), "wb") as f:
            f.write(data)
        files[kind] = name

    put("grayscale", "gray.JPEG", jpeg_bytes(rgb[..., 0]))
    b = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(b, "JPEG", quality=92)
    put("cmyk", "cmyk.JPEG", b.getvalue())
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "PNG")
    put("png_as_jpeg", "png.JPEG", b.getvalue())
    b = io.BytesIO()
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(b, "PNG")
    put("alpha", "rgba.png", b.getvalue())
    b = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(b, "GIF")
    put("palette", "palette.gif", b.getvalue())
    b = io.BytesIO()
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(b, "PNG")
    put("16bit", "deep.png", b.getvalue())
    put("progressive", "progressive.jpg", jpeg_bytes(rgb, progressive=True))
    b = io.BytesIO()
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(rgb).save(b, "JPEG", quality=92, exif=ex)
    put("exif_rotated", "rotated.jpg", b.getvalue())
    good = jpeg_bytes(rgb)
    put("truncated", "truncated.JPEG", good[: len(good) // 2])
    put("empty", "empty.JPEG", b"")
    put("not_image_ext", "notes.JPEG", b"this is not an image\n")
    put("non_image", "README.txt", b"class notes\n")
    put("hidden", ".DS_Store", b"\x00\x01junk")
    return files


def tree(root: str) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root: for byte-for-byte output comparisons."""
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
        for d, _, fs in os.walk(root)
        for f in fs
    }


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Reads slowed down in every process of a run (the CLI, the forkserver and its workers all run
# sitecustomize at start-up), so that a signal or a second process lands mid-run.
SLOW_READS = """
import time
from imgprep import sources
_read = sources.Source.read
def slow(self, item, **kw):
    time.sleep({delay})
    return _read(self, item, **kw)
sources.Source.read = slow
"""


def slow_reads_env(folder, delay: float = 0.02) -> dict:
    """Environment for a subprocess whose image reads each take `delay` seconds longer."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(SLOW_READS.format(delay=delay))
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}"}


def cli_argv(*args) -> list[str]:
    """The argv of `imgprep ARGS...` in a fresh interpreter (every argument as a string)."""
    return [sys.executable, "-m", "imgprep.cli.main", *(str(a) for a in args)]


# The run of test_distributed: ddp_script.py trains it as two torchrun ranks, the test resumes it in
# one process, which needs the same architecture and data settings.
DDP_RUN = dict(batch_size=8, init="kaiming", width_mult=0.125, dropout=0.0, workers=1, seed=5, steps_per_epoch=3)


def bucket_tree(url: str) -> dict[str, bytes]:
    """{key: bytes} of every object under an s3:// prefix (as `tree` of a folder)."""
    from imgprep.remote import Store

    st = Store(url)
    return {key: st.get(key) for key, _ in st.list("")}
