"""Geometry of the stored image: shorter side to `size`, then the central `size` x `size` patch.

Pure functions over shapes and arrays; no I/O. The resize and the crop are done in one resampling
step: the crop window is mapped back to source coordinates, so only the pixels that are kept get
filtered and interpolated.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["resize_target", "center_crop_offset", "source_window", "antialias_sigma", "resize_center_crop"]


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


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (antialiased when shrinking) and keep the centre square.

    Args:
        image: uint8 (H, W, 3).
        size: output side.
    Returns:
        uint8 (size, size, 3), C-contiguous.
    """
    import cv2  # heavy import kept out of module import time

    h, w = image.shape[:2]
    x0, y0, x1, y1 = source_window(h, w, size)
    sx, sy = (x1 - x0) / size, (y1 - y0) / size  # source pixels per output pixel
    # Work on the integer-aligned region around the window (plus a filter margin) only.
    margin = 2 + int(math.ceil(3 * antialias_sigma(max(sx, sy))))
    cx0, cy0 = max(0, int(math.floor(x0)) - margin), max(0, int(math.floor(y0)) - margin)
    cx1, cy1 = min(w, int(math.ceil(x1)) + margin), min(h, int(math.ceil(y1)) + margin)
    region = image[cy0:cy1, cx0:cx1]
    # Integer box-average first when shrinking by 2x or more: exact area filtering, cheap.
    k = int(min(sx, sy)) if min(sx, sy) >= 2 else 1
    if k > 1:
        rh, rw = region.shape[0] // k, region.shape[1] // k
        region = cv2.resize(region[: rh * k, : rw * k], (rw, rh), interpolation=cv2.INTER_AREA)
        sx, sy = sx / k, sy / k
    sig_x, sig_y = antialias_sigma(sx), antialias_sigma(sy)
    if sig_x > 0.05 or sig_y > 0.05:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=max(sig_x, 1e-3), sigmaY=max(sig_y, 1e-3),
                                  borderType=cv2.BORDER_REFLECT)
    # Affine map from output pixel centres to region pixel centres:
    # x_src = (x0 - cx0) / k + (u + 0.5) * sx - 0.5
    m = np.array(
        [[sx, 0.0, (x0 - cx0) / k + 0.5 * sx - 0.5], [0.0, sy, (y0 - cy0) / k + 0.5 * sy - 0.5]],
        dtype=np.float64,
    )
    out = cv2.warpAffine(region, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out)
