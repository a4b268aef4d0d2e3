"""Geometry of the stored image: shorter side to `size`, then the central `size` x `size` patch;
and where windows sit inside it.

Pure functions over shapes and arrays; no I/O. The resize and the crop are done in one resampling
step: the crop window is mapped back to source coordinates, so only the pixels that are kept get
filtered and interpolated.
"""

from __future__ import annotations

import math

import numpy as np

from .constants import CROP_SIZE, STORED_SIZE

__all__ = [
    "Scratch",
    "resize_target",
    "center_crop_offset",
    "train_crop",
    "source_window",
    "antialias_sigma",
    "resize_center_crop",
]


def resize_target(height: int, width: int, size: int) -> tuple[int, int]:
    """Size (h, w) after scaling so that the shorter side is exactly `size` (longer side rounded)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if height <= width:
        return size, max(size, int(round(width * size / height)))
    return max(size, int(round(height * size / width))), size


def center_crop_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the central `size` x `size` window of an image of (height, width)."""
    return (height - size) // 2, (width - size) // 2


def train_crop(size: int) -> int:
    """Side of the training and test windows of a stored image of side `size`: 224 for 256 (section 4.1)."""
    return size * CROP_SIZE // STORED_SIZE


def source_window(height: int, width: int, size: int) -> tuple[float, float, float, float]:
    """The crop window in source pixel coordinates, as (x0, y0, x1, y1) edges (not centres).

    Equivalent to resizing the whole image to `resize_target` and cropping at
    `center_crop_offset`: the per-axis scale is the one of that resize.
    """
    rh, rw = resize_target(height, width, size)
    top, left = center_crop_offset(rh, rw, size)
    sy, sx = height / rh, width / rw
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def antialias_sigma(scale: float) -> float:
    """Gaussian pre-filter sigma for downscaling by `scale` (> 1) before bilinear sampling.

    sigma = (scale - 1) / 2, the rule scikit-image uses for anti-aliasing; 0 when upscaling.
    """
    return max(0.0, (scale - 1.0) / 2.0)


class Scratch:
    """uint8 arrays reused from one image to the next: the `out` arrays of one worker's decode,
    resize and encode calls. Fresh ones of a few hundred kilobytes each, image after image, were
    mapped by glibc and faulted in by the kernel (`prepare --workers 1`: 66 page faults an image).
    An array it gives is valid until the next `get` of the same name; arrays over KEEP_BYTES are
    not kept (one huge image does not hold its memory for the rest of the job)."""

    KEEP_BYTES = 16 << 20

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous uint8 array of `shape`, on the memory of the last one of `name` where it fits."""
        n = math.prod(shape)
        a = self._arrays.get(name)
        if a is None or a.size < n:
            if n + n // 4 > self.KEEP_BYTES:
                return np.empty(shape, np.uint8)
            a = self._arrays[name] = np.empty(n + n // 4, np.uint8)  # room for a slightly larger next image
        return a[:n].reshape(shape)


def resize_center_crop(image: np.ndarray, size: int, scratch: Scratch | None = None) -> np.ndarray:
    """Resize so the shorter side is `size` (antialiased when shrinking) and keep the centre square.

    The window of `source_window` is snapped to whole source pixels (at most half a source pixel
    off), box-averaged by the integer part of the scale when shrinking 2x or more, Gaussian
    pre-filtered by `antialias_sigma` of the remaining scale, and bilinearly resampled.

    Args:
        image: uint8 (H, W, 3).
        size: output side.
        scratch: where the intermediate and output arrays are reused (valid until its next use).
    Returns:
        uint8 (size, size, 3), C-contiguous.
    """
    import cv2  # heavy import kept out of module import time

    h, w = image.shape[:2]
    x0, y0, x1, y1 = source_window(h, w, size)
    cx0, cy0 = min(w - 1, int(round(x0))), min(h - 1, int(round(y0)))
    cx1, cy1 = max(cx0 + 1, min(w, int(round(x1)))), max(cy0 + 1, min(h, int(round(y1))))
    region = image[cy0:cy1, cx0:cx1]
    sx, sy = region.shape[1] / size, region.shape[0] / size  # source pixels per output pixel
    k = int(min(sx, sy))
    if k >= 2:  # exact area average by the integer factor: cheap and alias-free
        rh, rw = region.shape[0] // k, region.shape[1] // k
        dst = scratch.get("area", (rh, rw, 3)) if scratch is not None else None
        region = cv2.resize(region[: rh * k, : rw * k], (rw, rh), dst=dst, interpolation=cv2.INTER_AREA)
        sx, sy = region.shape[1] / size, region.shape[0] / size
    sig_x, sig_y = antialias_sigma(sx), antialias_sigma(sy)
    # Below sigma 0.25 a 3-tap Gaussian has side weights < 3e-4: a no-op on uint8, skipped.
    if max(sig_x, sig_y) >= 0.25:
        dst = scratch.get("blur", region.shape) if scratch is not None else None
        region = cv2.GaussianBlur(
            region, (0, 0), dst=dst, sigmaX=max(sig_x, 1e-3), sigmaY=max(sig_y, 1e-3), borderType=cv2.BORDER_REFLECT
        )
    dst = scratch.get("stored", (size, size, 3)) if scratch is not None else None
    out = cv2.resize(region, (size, size), dst=dst, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out)
