"""The loader's last step, on the training device: uint8 windows to the model's input in one op.

On the GPU, DALI hands over what only it can do cheaply (decode, crop, mirror) as uint8, a quarter
of float32's bytes, with each sample's parameters; this op does the rest in one pass (one kernel
once compiled), in the training process, as ffcv does:

    img    uint8   (N, c, c, 3)  the decoded window, already mirrored where mirror = 1
    params float32 (N, 6)        top, left, mirror, lighting shift (R, G, B)
    out[n, ch, h, w] = img[n, h, w, ch] * inv[ch] + (shift[n, ch] - channel_mean[ch]) * inv[ch]
                       - P[f, ch, top + h, a + w]
    with inv = 1 / std, P = the mean image * inv as is (f = 0) and mirrored (f = 1), and a = left,
    or S - left - c when mirrored: the mirrored window of the mean is a window of the mirrored mean,
    so every read runs forwards.

The result equals `augment.reference_view` (tested on CPU tensors against NumPy), in the
requested dtype; channels_last is the uint8 input's own layout, so it costs no transpose.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

__all__ = ["PARAMS", "mean_planes", "finish_windows", "WindowFinisher"]

PARAMS = ("top", "left", "mirror", "shift_r", "shift_g", "shift_b")  # the columns of `params`


def mean_planes(mean_image: np.ndarray | None, inv_std: np.ndarray) -> np.ndarray | None:
    """(S, S, 3) mean image -> float32 (2, 3, S, S): divided by std, as is and mirrored; None for none."""
    if mean_image is None:
        return None
    plane = (np.asarray(mean_image, np.float64) * inv_std).transpose(2, 0, 1)  # (3, S, S)
    return np.ascontiguousarray(np.stack([plane, plane[:, :, ::-1]]), np.float32)


def finish_windows(
    img: torch.Tensor,
    params: torch.Tensor,
    planes: torch.Tensor | None,
    inv_std: torch.Tensor,
    offset: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """(N, c, c, 3) uint8 windows and (N, 6) parameters -> (N, 3, c, c) in `dtype`.

    planes: (2, 3, S, S) from `mean_planes`, or None. inv_std, offset: (3,), offset = -channel_mean * inv_std.
    Pure tensor math (no host reads), so torch.compile fuses it into one kernel.
    """
    c = img.shape[1]
    x = img.permute(0, 3, 1, 2).float()  # (N, 3, c, c), channels_last strides
    off = offset + params[:, 3:6] * inv_std  # (N, 3)
    x = x * inv_std[None, :, None, None] + off[:, :, None, None]
    if planes is not None:
        s = planes.shape[-1]
        top, left = params[:, 0].long(), params[:, 1].long()
        f = (params[:, 2] > 0.5).long()
        a = torch.where(f.bool(), s - left - c, left)
        r = torch.arange(c, device=img.device)
        rows, cols = top[:, None] + r, a[:, None] + r  # (N, c) each
        ch = torch.arange(3, device=img.device)
        x = x - planes[f[:, None, None, None], ch[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype).contiguous(memory_format=fmt)


class WindowFinisher:
    """`finish_windows` with a dataset's statistics held on the device, compiled on CUDA.

    norm: (subtract the mean image?, channel mean (3,), channel std (3,)) from `augment.normalization`.
    compile: torch.compile it (None: on CUDA only); if compiling fails, one warning line and eager.
    """

    def __init__(
        self,
        mean_image: np.ndarray | None,
        norm: tuple,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compile: bool | None = None,
    ):
        sub_mean, ch_mean, ch_std = norm
        inv = 1.0 / np.asarray(ch_std, np.float64)
        planes = mean_planes(mean_image if sub_mean else None, inv)
        self.device = torch.device(device)
        self.planes = torch.from_numpy(planes).to(self.device) if planes is not None else None
        self.inv = torch.tensor(inv, dtype=torch.float32, device=self.device)
        self.offset = torch.tensor(-np.asarray(ch_mean, np.float64) * inv, dtype=torch.float32, device=self.device)
        self.dtype, self.channels_last = dtype, channels_last
        self.fn = finish_windows
        if compile if compile is not None else self.device.type == "cuda":
            self.fn = torch.compile(finish_windows, dynamic=False)
        self.compiled = self.fn is not finish_windows

    def __call__(self, img: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        params = params.to(self.device, non_blocking=True)
        args = (img, params, self.planes, self.inv, self.offset, self.dtype, self.channels_last)
        if self.compiled:
            try:
                return self.fn(*args)
            except Exception as exc:  # a missing compiler or a backend bug: the same math, eagerly
                lines = str(exc).strip().splitlines()
                sys.stderr.write(
                    f"imgprep: warning: compiling the loader's normalize op failed "
                    f"({type(exc).__name__}: {lines[0][:160] if lines else ''}); running it eagerly\n"
                )
                self.fn, self.compiled = finish_windows, False
        return finish_windows(*args)
