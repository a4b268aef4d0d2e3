"""Training-set statistics: the mean image and the RGB covariance PCA of section 4.1.

Accumulation is exact: pixel sums and the 3x3 Gram matrix of every image are integers, kept in
int64 (they fit up to ~10^6 ImageNets), so partial sums from any number of workers merge exactly
and in any order, and the result does not depend on how the work was split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["StatsAccumulator", "DatasetStats", "gram", "pca", "finalize"]


def gram(image: np.ndarray, planes: list[np.ndarray] | None = None) -> np.ndarray:
    """Exact sum over pixels of x x^T for a uint8 (H, W, 3) image, as int64 (3, 3).

    From six sums of squares of uint8 planes: the diagonal is sum(r^2), the rest by
    r*g = (r^2 + g^2 - (r - g)^2) / 2. OpenCV sums uint8 squares in integers; its float64 result
    is within 1e-6 of that integer (the totals stay below 2^53), so rounding gives it exactly.
    2.6x cheaper than multiplying widened uint16 planes (0.04 against 0.11 ms at 256x256).
    planes: three uint8 (H, W) arrays to split the image into (reused from image to image: the
    split into fresh ones took 60 us at 256x256 on a Zen 3 EPYC, into these 16).
    """
    import cv2

    image = np.ascontiguousarray(image)
    fits = planes is not None and planes[0].shape == image.shape[:2]
    planes = cv2.split(image, planes) if fits else cv2.split(image)  # 3 x (H, W) uint8
    sq = [round(cv2.norm(c, cv2.NORM_L2SQR)) for c in planes]
    g = np.diag(np.array(sq, np.int64))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        g[i, j] = g[j, i] = (sq[i] + sq[j] - round(cv2.norm(planes[i], planes[j], cv2.NORM_L2SQR))) // 2
    return g


# images added into the uint16 partial sum before it is folded into the int64 one: 255 * 257 = 2^16 - 1
_PART_IMAGES = 257


class StatsAccumulator:
    """Running integer sums over uint8 RGB images of one size."""

    def __init__(self, size: int):
        self.size = size
        self._sum = np.zeros((size, size, 3), np.int64)  # per-position pixel sums
        self._part = None  # uint16 (size, size * 3): images added since the last fold
        self._planes = None  # the image split into its channels for `gram`, reused
        self._in_part = 0
        self.gram = np.zeros((3, 3), np.int64)  # sum over all pixels of x x^T
        self.images = 0

    @property
    def sum_image(self) -> np.ndarray:
        """int64 (size, size, 3): the per-position pixel sums (the partial ones folded in)."""
        self._fold()
        return self._sum

    def _fold(self) -> None:
        if self._in_part:
            self._sum += self._part.reshape(self._sum.shape)
            self._part[:] = 0
            self._in_part = 0

    def add(self, image: np.ndarray) -> None:
        """Add one uint8 (size, size, 3) image (exact: uint16 partial sums, folded into int64
        before they could overflow). The partial sum is half the bytes of an int32 one, which
        matters image after image with the rest of a worker's work between (at 256x256 on a Zen 3
        EPYC, caches flushed between calls: 44 against 77 us; on a Zen 4 the int32 add took 0.06
        ms, where OpenCV's mixed-type `cv2.add` into int32 took 0.30 and an int64 numpy add 0.11)."""
        if self._part is None:
            self._part = np.zeros((self.size, self.size * 3), np.uint16)
            self._planes = [np.empty((self.size, self.size), np.uint8) for _ in range(3)]
        elif self._in_part >= _PART_IMAGES:
            self._fold()
        flat = np.ascontiguousarray(image).reshape(self.size, self.size * 3)
        np.add(self._part, flat, out=self._part)  # uint8 + uint16 -> uint16: exact (_PART_IMAGES)
        self._in_part += 1
        self.gram += gram(image, self._planes)
        self.images += 1

    def merge(self, other: StatsAccumulator) -> None:
        """Add another accumulator's sums (exact)."""
        if other.size != self.size:
            raise ValueError(f"cannot merge statistics of size {other.size} into size {self.size}")
        self._fold()
        self._sum += other.sum_image
        self.gram += other.gram
        self.images += other.images

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sums as arrays, for saving (npz) or sending to another process."""
        return {"sum_image": self.sum_image, "gram": self.gram, "images": np.array(self.images)}

    @classmethod
    def from_arrays(cls, arrays) -> StatsAccumulator:
        """Inverse of `to_arrays`."""
        acc = cls(int(arrays["sum_image"].shape[0]))
        acc._sum = np.array(arrays["sum_image"], np.int64)
        acc.gram = np.array(arrays["gram"], np.int64)
        acc.images = int(arrays["images"])
        return acc


@dataclass
class DatasetStats:
    """Finalized statistics, all on the 0-255 scale."""

    mean_image: np.ndarray  # float32 (size, size, 3), RGB
    mean: np.ndarray  # (3,) per-channel mean over all pixels
    std: np.ndarray  # (3,) per-channel population std
    cov: np.ndarray  # (3, 3) population covariance of RGB pixel values
    eigval: np.ndarray  # (3,) descending
    eigvec: np.ndarray  # (3, 3); eigvec[i] is the unit eigenvector of eigval[i]
    pixels: int
    images: int

    def to_json(self) -> dict:
        """JSON-ready dict (without the mean image, which goes to mean.npy)."""
        return {
            "scale": "0-255",
            "channels": "RGB",
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "cov": self.cov.tolist(),
            "eigval": self.eigval.tolist(),
            "eigvec": self.eigvec.tolist(),
            "pixels": self.pixels,
            "images": self.images,
        }


def _jacobi_eigh(a: list[list[float]], sweeps: int = 64) -> tuple[list[float], list[list[float]]]:
    """Eigenvalues and eigenvector columns of a symmetric 3x3 matrix by cyclic Jacobi rotations,
    in Python floats: only +, -, *, / and sqrt, each correctly rounded IEEE double arithmetic, so
    the result is the same on every CPU. LAPACK's `eigh` is not: its kernels are chosen for the
    processor, and AVX2 and AVX-512 machines differ in the last bits (and so in stats.json's bytes)."""
    a = [row[:] for row in a]
    v = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    for _ in range(sweeps):
        if a[0][1] == 0.0 and a[0][2] == 0.0 and a[1][2] == 0.0:
            break
        for p, q in ((0, 1), (0, 2), (1, 2)):
            if a[p][q] == 0.0:
                continue
            theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q])
            t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1.0))
            c = 1.0 / math.sqrt(t * t + 1.0)
            s = t * c
            for k in range(3):  # a <- a J (columns p, q), then J^T a (rows p, q)
                akp, akq = a[k][p], a[k][q]
                a[k][p], a[k][q] = c * akp - s * akq, s * akp + c * akq
            for k in range(3):
                apk, aqk = a[p][k], a[q][k]
                a[p][k], a[q][k] = c * apk - s * aqk, s * apk + c * aqk
            a[p][q] = a[q][p] = 0.0  # zero by construction; rounding left a trace
            for k in range(3):
                vkp, vkq = v[k][p], v[k][q]
                v[k][p], v[k][q] = c * vkp - s * vkq, s * vkp + c * vkq
    return [a[i][i] for i in range(3)], v


def pca(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric 3x3 covariance, bit for bit the same on every CPU.

    Returns:
        eigval (3,) descending and eigvec (3, 3) with eigvec[i] the unit eigenvector of eigval[i],
        signed so that its largest-magnitude component is positive (a deterministic choice).
    """
    c = np.asarray(cov, np.float64)
    w, v = _jacobi_eigh([[float(c[i, j]) for j in range(3)] for i in range(3)])
    order = sorted(range(3), key=lambda i: -w[i])
    eigval = np.array([w[i] for i in order])
    eigvec = np.array([[v[k][i] for k in range(3)] for i in order])
    for i in range(3):
        if eigvec[i, np.argmax(np.abs(eigvec[i]))] < 0:
            eigvec[i] = -eigvec[i]
    return eigval, eigvec


def finalize(acc: StatsAccumulator) -> DatasetStats:
    """Mean image, channel mean/std, covariance and its PCA from the exact sums."""
    if acc.images == 0:
        raise ValueError("no images were accumulated")
    n_img = acc.images
    n_pix = n_img * acc.size * acc.size
    mean_image = (acc.sum_image / n_img).astype(np.float32)
    s = [int(v) for v in acc.sum_image.sum(axis=(0, 1))]  # per-channel pixel sums
    # cov_ij = (n G_ij - s_i s_j) / n^2 in exact rationals: no cancellation at any scale.
    cov = np.array(
        [
            [float(Fraction(n_pix * int(acc.gram[i, j]) - s[i] * s[j], n_pix * n_pix)) for j in range(3)]
            for i in range(3)
        ]
    )
    mean = np.array([float(Fraction(v, n_pix)) for v in s])
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    eigval, eigvec = pca(cov)
    return DatasetStats(mean_image, mean, std, cov, eigval, eigvec, n_pix, n_img)
