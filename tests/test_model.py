"""The two-tower AlexNet: size, shapes, tower isolation, placements, against a grouped-conv reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgprep.trainer.config import CONV_LAYERS, AlexNetConfig
from imgprep.trainer.model import TwoTowerAlexNet, init_kaiming, init_paper


def test_parameter_count_of_the_paper():
    m = TwoTowerAlexNet(AlexNetConfig())
    assert sum(p.numel() for p in m.parameters()) == 60_965_224


def test_layer_shapes_at_224():
    m = TwoTowerAlexNet(AlexNetConfig(num_classes=1000))
    shapes = {}
    for tower, t in (("a", m.a), ("b", m.b)):
        for name, stage in t.stages.items():
            conv = stage[0]
            conv.register_forward_hook(
                lambda mod, i, o, k=f"{tower}.{name}": shapes.__setitem__(k, (tuple(i[0].shape), tuple(o.shape)))
            )
    with torch.no_grad():
        out = m(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    expect = {
        "conv1": ((2, 3, 224, 224), (2, 48, 55, 55)),
        "conv2": ((2, 48, 27, 27), (2, 128, 27, 27)),
        "conv3": ((2, 256, 13, 13), (2, 192, 13, 13)),
        "conv4": ((2, 192, 13, 13), (2, 192, 13, 13)),
        "conv5": ((2, 192, 13, 13), (2, 128, 13, 13)),
    }
    for tower in "ab":
        for name, s in expect.items():
            assert shapes[f"{tower}.{name}"] == s
    assert m.a.fc6[0].in_features == 9216 and m.a.fc6[0].out_features == 2048
    assert m.a.fc7[0].in_features == 4096 and m.fc8.in_features == 4096


def grouped_reference(m: TwoTowerAlexNet, x: torch.Tensor) -> torch.Tensor:
    """The same network written the Caffe way: one stream, conv2/4/5 as groups=2 convolutions."""
    a, b = m.a, m.b

    def conv(name, x, groups):
        ca, cb = a.stages[name][0], b.stages[name][0]
        w, bias = torch.cat([ca.weight, cb.weight]), torch.cat([ca.bias, cb.bias])
        return F.relu(F.conv2d(x, w, bias, ca.stride, ca.padding, groups=groups))

    lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def per_group(fn, x):  # LRN normalizes within each tower's channels
        h = x.shape[1] // 2
        return torch.cat([fn(x[:, :h]), fn(x[:, h:])], 1)

    x = F.max_pool2d(per_group(lrn, conv1_both_towers(m, x)), 3, 2)
    x = F.max_pool2d(per_group(lrn, conv("conv2", x, 2)), 3, 2)
    x = conv("conv3", x, 1)
    x = conv("conv4", x, 2)
    x = F.max_pool2d(conv("conv5", x, 2), 3, 2)
    h = x.shape[1] // 2
    x = torch.cat([x[:, :h].flatten(1), x[:, h:].flatten(1)], 1)
    x = F.relu(torch.cat([a.fc6[0](x), b.fc6[0](x)], 1))
    x = F.relu(torch.cat([a.fc7[0](x), b.fc7[0](x)], 1))
    return m.fc8(x)


def conv1_both_towers(m, x):
    ca, cb = m.a.stages["conv1"][0], m.b.stages["conv1"][0]
    return F.relu(torch.cat([F.conv2d(x, ca.weight, ca.bias, 4, 2), F.conv2d(x, cb.weight, cb.bias, 4, 2)], 1))


def test_equals_the_grouped_convolution_formulation():
    torch.manual_seed(0)
    m = TwoTowerAlexNet(AlexNetConfig(num_classes=7, width_mult=0.25, dropout=0.0)).eval()
    init_kaiming(m)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(m(x), grouped_reference(m, x), atol=1e-4, rtol=1e-4)


def test_two_placements_agree():
    torch.manual_seed(1)
    cfg = AlexNetConfig(num_classes=5, width_mult=0.25, dropout=0.0)
    one = TwoTowerAlexNet(cfg).place("cpu")
    two = TwoTowerAlexNet(cfg)
    two.load_state_dict(one.state_dict())
    two.place("cpu", "cpu")  # the model-parallel code path with both towers given "cpu"
    x = torch.randn(2, 3, 112, 112)
    y1, y2 = one(x), two(x)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    y2.sum().backward()
    for (n, p1), (_, p2) in zip(one.named_parameters(), two.named_parameters(), strict=True):
        assert torch.equal(p1.grad, p2.grad), n


def test_tower_isolation():
    torch.manual_seed(2)
    m = TwoTowerAlexNet(AlexNetConfig(num_classes=5, width_mult=0.25, dropout=0.0))
    acts = {}
    for tower, t in (("a", m.a), ("b", m.b)):
        for name in CONV_LAYERS:
            t.stages[name].register_forward_hook(lambda mod, i, o, k=f"{tower}.{name}": acts.__setitem__(k, o))
    m(torch.randn(2, 3, 112, 112))
    b_params = {n: p for n, p in m.b.named_parameters()}
    # conv2, conv4 and conv5 of tower A see nothing of tower B's activations: no gradient flows back
    for own, upstream in (("conv2", "conv1"), ("conv4", "conv3"), ("conv5", "conv4")):
        g = torch.autograd.grad(acts[f"a.{own}"].sum(), acts[f"b.{upstream}"], retain_graph=True, allow_unused=True)[0]
        assert g is None or not g.any(), f"tower A {own} depends on tower B {upstream}"
    # and tower B's conv1/conv2 weights get no gradient from tower A's conv2
    gs = torch.autograd.grad(
        acts["a.conv2"].sum(), [b_params["stages.conv1.0.weight"]], retain_graph=True, allow_unused=True
    )
    assert gs[0] is None or not gs[0].any()
    # conv3 is where the towers meet: tower A's conv3 does depend on tower B's conv2
    g = torch.autograd.grad(acts["a.conv3"].sum(), acts["b.conv2"], retain_graph=True)[0]
    assert g.abs().sum() > 0


@pytest.mark.parametrize("layer", CONV_LAYERS)
def test_each_conv_layer_can_be_removed(layer):
    m = TwoTowerAlexNet(AlexNetConfig(num_classes=3, width_mult=0.125, remove=(layer,)))
    assert m(torch.randn(2, 3, 224, 224)).shape == (2, 3)
    assert not any(isinstance(x, nn.Conv2d) for x in m.a.stages[layer])


def test_activation_and_dropout_switches():
    m = TwoTowerAlexNet(AlexNetConfig(num_classes=3, width_mult=0.125, activation="tanh", dropout=0.25))
    assert any(isinstance(x, nn.Tanh) for x in m.a.stages["conv1"]) and m.a.fc6[2].p == 0.25
    with pytest.raises(ValueError):
        TwoTowerAlexNet(AlexNetConfig(remove=("conv9",)))


def test_paper_init():
    torch.manual_seed(3)
    m = TwoTowerAlexNet(AlexNetConfig())
    init_paper(m)
    for t in (m.a, m.b):
        for name in CONV_LAYERS:
            conv = t.stages[name][0]
            assert abs(conv.weight.std().item() - 0.01) < 0.002
            assert torch.all(conv.bias == (1.0 if name in ("conv2", "conv4", "conv5") else 0.0))
        assert torch.all(t.fc6[0].bias == 1) and torch.all(t.fc7[0].bias == 1)
    assert torch.all(m.fc8.bias == 0) and abs(m.fc8.weight.std().item() - 0.01) < 0.001


def test_forward_macs_match_the_layer_table():
    """Convolutions: output elements x (input channels per tower x kernel area); linear: in x out."""
    from imgprep.trainer.model import forward_macs

    table = [
        55 * 55 * 96 * 3 * 11 * 11,  # conv1, both towers
        27 * 27 * 256 * 48 * 5 * 5,  # conv2: each tower sees its own 48 channels
        13 * 13 * 384 * 256 * 3 * 3,  # conv3: both towers' 256
        13 * 13 * 384 * 192 * 3 * 3,  # conv4
        13 * 13 * 256 * 192 * 3 * 3,  # conv5
        9216 * 4096,  # fc6
        4096 * 4096,  # fc7
        4096 * 1000,  # fc8
    ]
    assert forward_macs(AlexNetConfig()) == sum(table) == 724_406_816  # 4.35 GFLOP per training image
    assert forward_macs(AlexNetConfig(num_classes=10), 224) == sum(table) - 4096 * 990


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_equals_torch_local_response_norm(channels_last):
    from imgprep.trainer.model import LocalResponseNorm

    torch.manual_seed(0)
    x = torch.randn(3, 48, 13, 11) * 30  # activations of the scale conv1 gives raw pixels
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    got = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for size in (1, 2, 4):  # even windows: the same off-centre choice as torch's
        torch.testing.assert_close(
            LocalResponseNorm(size, k=1.0)(x), nn.LocalResponseNorm(size, k=1.0)(x), atol=1e-5, rtol=1e-5
        )
