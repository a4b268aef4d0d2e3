"""finish.finish_windows (the GPU loader's last op) on CPU tensors against a plain NumPy reference."""

import numpy as np
import pytest
import torch

from imgprep import finish
from imgprep.finish import WindowFinisher, finish_windows, mean_planes

S, C, N = 20, 14, 6


def reference(window, mean_image, top, left, mirror, shift, ch_mean, ch_std):
    """One view in float64 NumPy from the un-mirrored window of the image (c, c, 3): + shift,
    - the mean image's window, per-channel normalize, mirror, CHW."""
    x = window.astype(np.float64) + shift
    if mean_image is not None:
        x = x - mean_image[top : top + C, left : left + C]
    x = (x - ch_mean) / ch_std
    if mirror:
        x = x[:, ::-1]
    return x.transpose(2, 0, 1)


def batch(seed):
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, 256, (N, C, C, 3), dtype=np.uint8)
    tops, lefts = rng.integers(0, S - C + 1, N), rng.integers(0, S - C + 1, N)
    mirrors = np.array([0, 1, 1, 0, 1, 0])
    shifts = rng.normal(0, 20, (N, 3))
    handed = np.stack([w[:, ::-1] if m else w for w, m in zip(windows, mirrors, strict=True)])  # DALI mirrors
    params = np.column_stack([tops, lefts, mirrors, shifts]).astype(np.float32)
    return windows, handed, params


@pytest.mark.parametrize("mode", ["mean_image", "mean_image_std", "channel", "none"])
def test_equals_numpy_reference_for_every_normalize_mode(mode):
    rng = np.random.default_rng(1)
    mean_image = rng.uniform(60, 200, (S, S, 3))
    ch_mean, ch_std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 55.0, 70.0])
    sub_mean = mode.startswith("mean_image")
    m = ch_mean if mode == "channel" else np.zeros(3)
    s = ch_std if mode in ("mean_image_std", "channel") else np.ones(3)
    windows, handed, params = batch(2)
    inv = 1 / s
    planes = mean_planes(mean_image if sub_mean else None, inv)
    out = finish_windows(
        torch.from_numpy(handed),
        torch.from_numpy(params),
        torch.from_numpy(planes) if planes is not None else None,
        torch.tensor(inv, dtype=torch.float32),
        torch.tensor(-m * inv, dtype=torch.float32),
    )
    assert out.shape == (N, 3, C, C) and out.dtype == torch.float32 and out.is_contiguous()
    for i in range(N):
        top, left, mirror = int(params[i, 0]), int(params[i, 1]), bool(params[i, 2])
        want = reference(windows[i], mean_image if sub_mean else None, top, left, mirror, params[i, 3:], m, s)
        np.testing.assert_allclose(out[i].numpy(), want, rtol=1e-5, atol=1e-4)


def test_dtype_and_channels_last_keep_the_values():
    rng = np.random.default_rng(3)
    mean_image = rng.uniform(60, 200, (S, S, 3))
    _, handed, params = batch(4)
    norm = (True, np.zeros(3), np.array([50.0, 60.0, 70.0]))
    f32 = WindowFinisher(mean_image, norm, torch.device("cpu"))
    bf16 = WindowFinisher(mean_image, norm, torch.device("cpu"), torch.bfloat16, channels_last=True)
    a, b = (
        f32(torch.from_numpy(handed), torch.from_numpy(params)),
        bf16(torch.from_numpy(handed), torch.from_numpy(params)),
    )
    assert b.dtype == torch.bfloat16 and b.is_contiguous(memory_format=torch.channels_last)
    assert not f32.compiled and not bf16.compiled  # eager on the CPU by default
    torch.testing.assert_close(b.float(), a, rtol=1e-2, atol=1e-2)  # bf16 keeps 8 bits of mantissa


def test_compiled_equals_eager_and_a_failed_compile_falls_back(monkeypatch, capfd):
    rng = np.random.default_rng(5)
    mean_image = rng.uniform(60, 200, (S, S, 3))
    _, handed, params = batch(6)
    norm = (True, np.zeros(3), np.ones(3))
    img, p = torch.from_numpy(handed), torch.from_numpy(params)
    eager = WindowFinisher(mean_image, norm, torch.device("cpu"))(img, p)
    compiled = WindowFinisher(mean_image, norm, torch.device("cpu"), compile=True)
    assert compiled.compiled
    torch.testing.assert_close(compiled(img, p), eager, rtol=1e-5, atol=1e-4)

    def broken(*args, **kw):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(finish.torch, "compile", lambda fn, **kw: broken)
    falls = WindowFinisher(mean_image, norm, torch.device("cpu"), compile=True)
    torch.testing.assert_close(falls(img, p), eager)
    err = capfd.readouterr().err
    assert "warning: compiling the loader's normalize op failed (RuntimeError: no compiler here)" in err
    assert "second line" not in err and not falls.compiled
