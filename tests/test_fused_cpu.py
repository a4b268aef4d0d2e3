"""The DALI CPU pipeline's one-pass operator, called directly, against plain NumPy."""

import numpy as np
import pytest

fused_cpu = pytest.importorskip("imgprep.fused_cpu")  # numba


def reference(img, mean_plane, top, left, mirror, inv, offset):
    """out[ch, h, w'] = img[h, w, ch] * inv[ch] + offset[ch] - mean[ch, top + h, left + w], mirrored
    along w when asked: float64, then float32. img (c, c, 3); mean_plane (3, S, S) or None."""
    c = img.shape[0]
    x = img.astype(np.float64) * inv + offset  # (c, c, 3)
    if mean_plane is not None:
        x -= mean_plane[:, top : top + c, left : left + c].transpose(1, 2, 0)
    if mirror:
        x = x[:, ::-1]
    return x.transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize("c", [224, 56, 7])
@pytest.mark.parametrize("mirror", [0, 1])
@pytest.mark.parametrize("with_mean", [True, False])
def test_fused_kernel_equals_numpy(c, mirror, with_mean):
    rng = np.random.default_rng(c * 4 + mirror * 2 + with_mean)
    s = c + 32
    img = rng.integers(0, 256, (c, c, 3), dtype=np.uint8)
    plane = rng.normal(0, 1, (3, s, s)).astype(np.float32)
    inv, offset = np.float32([1 / 58.4, 1 / 57.1, 1 / 57.4]), np.float32([-2.1, -2.0, -1.8])
    for top, left in [(0, 0), (s - c, s - c), (3, 29)]:
        p = np.float32([top, left, mirror, *inv, *offset])
        out = np.full((3, c, c), np.nan, np.float32)
        mean = plane[None] if with_mean else np.zeros((1, 3, 1, 1), np.float32)
        fused_cpu.fused_kernel(out, img, mean, p)
        want = reference(img, plane if with_mean else None, top, left, mirror, inv, offset)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)
