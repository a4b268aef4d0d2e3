"""AlexNet as in section 3 of Krizhevsky, Sutskever and Hinton (2012): two towers, one per GPU.

Per tower (A and B), with the paper's widths at width_mult=1:

  input (N, 3, 224, 224)
  conv1  48 kernels 11x11, stride 4, pad 2      -> (N, 48, 55, 55)   own tower
         224 gives 55: floor((224 + 2*2 - 11) / 4) + 1 = 55 (the paper's 224 needs this
         padding; Caffe's 227 input gets 55 without it)
         ReLU, LRN(n=5, alpha=1e-4, beta=0.75, k=2), max-pool 3/2 -> (N, 48, 27, 27)
  conv2  128 kernels 5x5, pad 2                 -> (N, 128, 27, 27)  own tower
         ReLU, LRN, max-pool 3/2                -> (N, 128, 13, 13)
  conv3  192 kernels 3x3, pad 1                 -> (N, 192, 13, 13)  sees BOTH towers (256 in)
  conv4  192 kernels 3x3, pad 1                 -> (N, 192, 13, 13)  own tower
  conv5  128 kernels 3x3, pad 1, max-pool 3/2   -> (N, 128, 6, 6)    own tower
  fc6    2048, dropout                          <- (N, 9216)         sees BOTH towers
  fc7    2048, dropout                          <- (N, 4096)         sees BOTH towers
  fc8    num_classes                            <- (N, 4096)         one layer on the first device

60,965,224 parameters at 1000 classes. Cross-tower traffic happens only where the paper's GPUs
talked: pool2 -> conv3, pool5 -> fc6, fc6 -> fc7, fc7 -> fc8 (plus the input image itself).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CONV_LAYERS, AlexNetConfig

__all__ = ["AlexNetConfig", "TwoTowerAlexNet", "CONV_LAYERS", "init_paper", "init_kaiming", "forward_macs"]

# (out channels per tower, kernel, stride, padding, sees both towers) -- section 3.5
_CONV = {
    "conv1": (48, 11, 4, 2, False),
    "conv2": (128, 5, 1, 2, False),
    "conv3": (192, 3, 1, 1, True),
    "conv4": (192, 3, 1, 1, False),
    "conv5": (128, 3, 1, 1, False),
}
_FC = 2048  # fc6 and fc7 units per tower
_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # section 3.3
_POOL_AFTER = ("conv1", "conv2", "conv5")  # overlapping max-pool 3/2, section 3.4
_LRN_AFTER = ("conv1", "conv2")


class LocalResponseNorm(nn.Module):
    """Section 3.3's normalization, x / (k + alpha/n * sum of x^2 over n neighbouring channels)^beta,
    equal to `nn.LocalResponseNorm` (same alpha/n convention), written as pointwise ops over
    shifted channel slices: under `torch.compile` the square, the window sum and the power fuse
    into one kernel, where the stock module goes through a 3-D average pool."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        c = x.shape[1]
        sq = nn.functional.pad(x.square(), (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))  # (N, C+n-1, H, W)
        window = sum(sq[:, i : i + c] for i in range(self.size))  # the n channels around each one
        return x * (self.k + (self.alpha / self.size) * window).pow(-self.beta)


def _act(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.Tanh()


class Tower(nn.Module):
    """One tower's layers. Its conv3, fc6 and fc7 take both towers' activations as input."""

    def __init__(self, cfg: AlexNetConfig):
        super().__init__()
        self.stages = nn.ModuleDict()
        ch = 3  # channels entering the next conv, per tower
        for name in CONV_LAYERS:
            out, k, s, p, both = _CONV[name]
            layers: list[nn.Module] = []
            if name not in cfg.remove:
                out = cfg.width(out)
                layers += [nn.Conv2d(ch * 2 if both else ch, out, k, s, p), _act(cfg.activation)]
                if name in _LRN_AFTER:
                    layers.append(LocalResponseNorm(**_LRN))
                ch = out
            elif name == "conv1":  # keep conv1's stride-4 reduction so the rest of the net keeps its sizes
                layers.append(nn.AvgPool2d(4, 4))
            if name in _POOL_AFTER:
                layers.append(nn.MaxPool2d(3, 2))
            self.stages[name] = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((6, 6))  # a no-op at 224 input: 6x6 already
        fc = cfg.width(_FC)
        self.fc6 = nn.Sequential(nn.Linear(2 * ch * 36, fc), _act(cfg.activation), nn.Dropout(cfg.dropout))
        self.fc7 = nn.Sequential(nn.Linear(2 * fc, fc), _act(cfg.activation), nn.Dropout(cfg.dropout))
        self.fc_units = fc


class TwoTowerAlexNet(nn.Module):
    """The two-tower network, on one device or split over two (tower A, tower B)."""

    def __init__(self, cfg: AlexNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.a, self.b = Tower(cfg), Tower(cfg)
        self.fc8 = nn.Linear(2 * self.a.fc_units, cfg.num_classes)
        self.devices = (torch.device("cpu"), torch.device("cpu"))

    def place(self, dev_a: str | torch.device, dev_b: str | torch.device | None = None) -> TwoTowerAlexNet:
        """Put tower A (and fc8) on dev_a and tower B on dev_b (default: dev_a)."""
        da, db = torch.device(dev_a), torch.device(dev_b if dev_b is not None else dev_a)
        self.a.to(da)
        self.fc8.to(da)
        self.b.to(db)
        self.devices = (da, db)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) on the first device -> logits (N, num_classes) on the first device."""
        da, db = self.devices
        xa, xb = x.to(da), x.to(db)  # each tower reads the image (the paper's GPUs both did)
        for name in CONV_LAYERS:
            if _CONV[name][4] and name not in self.cfg.remove:  # conv3: the first crossing
                xa, xb = torch.cat([xa, xb.to(da)], 1), torch.cat([xa.to(db), xb], 1)
            xa, xb = self.a.stages[name](xa), self.b.stages[name](xb)
        xa, xb = self.a.pool(xa).flatten(1), self.b.pool(xb).flatten(1)  # (N, 128*36) each
        both_a, both_b = torch.cat([xa, xb.to(da)], 1), torch.cat([xa.to(db), xb], 1)  # pool5 -> fc6
        xa, xb = self.a.fc6(both_a), self.b.fc6(both_b)
        both_a, both_b = torch.cat([xa, xb.to(da)], 1), torch.cat([xa.to(db), xb], 1)  # fc6 -> fc7
        xa, xb = self.a.fc7(both_a), self.b.fc7(both_b)
        return self.fc8(torch.cat([xa, xb.to(da)], 1))  # fc7 -> fc8


def _convs_and_fcs(model: TwoTowerAlexNet):
    for t in (model.a, model.b):
        for name, stage in t.stages.items():
            for m in stage:
                if isinstance(m, nn.Conv2d):
                    yield name, m
        yield "fc6", t.fc6[0]
        yield "fc7", t.fc7[0]
    yield "fc8", model.fc8


def init_paper(model: TwoTowerAlexNet) -> None:
    """Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, 0 elsewhere."""
    for name, m in _convs_and_fcs(model):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.constant_(m.bias, 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)


def init_kaiming(model: TwoTowerAlexNet) -> None:
    """He-normal weights (fan-in, ReLU gain), zero biases: trains from the first epoch at small
    scale, where the paper's init stalls. Expects inputs of unit scale (normalize by std)."""
    for _name, m in _convs_and_fcs(model):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(m.bias)


def forward_macs(cfg: AlexNetConfig, crop: int = 224) -> int:
    """Multiply-adds of one forward pass of one crop x crop image through the convolutions and the
    linear layers (about 0.72 G at full width and 224). Counted on the meta device: no memory, no
    arithmetic, just the shapes."""
    macs = 0

    def count(mod, inputs, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):  # each output element: in/groups x kh x kw products
            macs += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs += out.numel() * mod.in_features

    with torch.device("meta"):
        model = TwoTowerAlexNet(cfg)
    model.place("meta")
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.register_forward_hook(count)
    model(torch.empty(1, 3, crop, crop, device="meta"))
    return macs
