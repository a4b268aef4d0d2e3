"""The paper's augmentation as pure array math (section 4.1), and a NumPy reference view.

Both loader backends follow these definitions: the DALI pipeline builds the same computation
from DALI operators, the torch fallback calls `reference_view` per sample, and the tests check
both against it.
"""

from __future__ import annotations

import numpy as np

from .geometry import center_crop_offset

__all__ = [
    "NORMALIZE",
    "LIGHTING_SCALES",
    "ten_crop_offsets",
    "lighting_scales",
    "lighting_shift",
    "normalization",
    "reference_view",
]

# How pixels are normalized after the lighting noise:
#   mean_image      x - M[window]                (the paper: raw, centred RGB)
#   mean_image_std  (x - M[window]) / std_c      (inputs of unit scale, for He initialisation)
#   channel         (x - mean_c) / std_c         (the torchvision convention, dataset statistics)
#   none            x                            (0-255)
NORMALIZE = ("mean_image", "mean_image_std", "channel", "none")
# Scale of the PCA lighting along each principal axis: see `lighting_scales`.
LIGHTING_SCALES = ("std", "eigval")


def ten_crop_offsets(size: int, crop: int) -> list[tuple[int, int]]:
    """(top, left) of the five test windows: centre, top-left, top-right, bottom-left,
    bottom-right. The ten views are these five, then the same five mirrored."""
    e = size - crop
    return [center_crop_offset(size, size, crop), (0, 0), (0, e), (e, 0), (e, e)]


def lighting_scales(eigval: np.ndarray, scale: str = "std") -> np.ndarray:
    """Per-axis scale of the PCA lighting noise.

    The paper writes a_i * lambda_i with lambda_i an eigenvalue of the RGB covariance. Taken
    literally on 0-255 pixels (lambda_1 ~ 3000 on ImageNet) that shifts colours by hundreds of
    levels; the implementations people train with (fb.resnet.torch, MXNet: 55.46, 4.79, 1.15 on
    0-255) use sqrt(lambda_i), the standard deviation along each principal axis. "std" (the
    default) does that; "eigval" is the literal reading.
    """
    eigval = np.asarray(eigval, np.float64)
    if scale == "std":
        return np.sqrt(np.maximum(eigval, 0.0))
    if scale == "eigval":
        return eigval
    raise ValueError(f"lighting scale {scale!r}: one of {', '.join(LIGHTING_SCALES)}")


def lighting_shift(alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray, scale: str = "std") -> np.ndarray:
    """RGB shift sum_i alpha_i * s_i * eigvec[i] for alpha (..., 3); returns (..., 3)."""
    return (np.asarray(alpha, np.float64) * lighting_scales(eigval, scale)) @ np.asarray(eigvec, np.float64)


def normalization(mode: str, stats: dict | None) -> tuple[bool, np.ndarray, np.ndarray]:
    """(subtract the mean image?, per-channel mean, per-channel std) for a normalize mode.

    `stats` (stats.json) may be None for "none", which needs no statistics.
    """
    if mode not in NORMALIZE:
        raise ValueError(f"normalize {mode!r}: one of {', '.join(NORMALIZE)}")
    zero, one = np.zeros(3), np.ones(3)
    if mode == "none":
        return False, zero, one
    std = np.asarray(stats["std"], np.float64)
    return {
        "mean_image": (True, zero, one),
        "mean_image_std": (True, zero, std),
        "channel": (False, np.asarray(stats["mean"], np.float64), std),
    }[mode]


def reference_view(
    image: np.ndarray,
    mean_image: np.ndarray | None,
    top: int,
    left: int,
    crop: int,
    flip: bool,
    shift: np.ndarray,
    channel_mean: np.ndarray,
    channel_std: np.ndarray,
) -> np.ndarray:
    """One augmented view, in NumPy: window, lighting shift, mean subtraction, flip, CHW.

    Args:
        image: (S, S, 3) RGB, 0-255.
        mean_image: (S, S, 3) or None; cropped to the same window and flipped with the image.
        shift: (3,) lighting shift added to every pixel.
    Returns:
        float32 (3, crop, crop).
    """
    x = image[top : top + crop, left : left + crop].astype(np.float32) + np.asarray(shift, np.float32)
    if mean_image is not None:
        x = x - mean_image[top : top + crop, left : left + crop]
    x = (x - np.asarray(channel_mean, np.float32)) / np.asarray(channel_std, np.float32)
    if flip:
        x = x[:, ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
