"""The 18 reference CNNs of nn-Meter's test set, as compact PyTorch builders (224x224, 1000 classes).

They exist only to calibrate the latency stand-in (:mod:`latency.standin`) against
nn-Meter's own predictions for these networks; weights are random and irrelevant.
Written from the architectures' papers (AlexNet, VGG, ResNet, DenseNet, GoogLeNet,
SqueezeNet, MobileNetV1/V2/V3, MnasNet, ProxylessNAS, ShuffleNetV2); the latency
numbers they are fitted to are nn-Meter's (Microsoft, MIT licence).

Variant choices (nn-Meter's test models were TensorFlow graphs of torchvision-like
definitions; where they are known to differ we follow nn-Meter's graphs):

* ``squeezenet`` is SqueezeNet **1.0** (7x7/96 stem): its nn-Meter latency matches
  torchvision's ``squeezenet1_0`` ONNX export (97.7 vs 98.4 ms on the A76), 1.1
  would be ~2.4x cheaper.
* ``mobilenetv3small`` mirrors nn-Meter's IR of it
  (``reference/nnmeter_ir_example_mobilenetv3small.json``): the first block keeps
  its 1x1 expansion, SE squeezes by exactly 4, the activation follows SE, and the
  head is a 96->1024 1x1 conv at 7x7, global pool and one FC. ``mobilenetv3large``
  uses the same conventions (head 160->1280 at 7x7, pool, FC).
* ``mnasnet`` is MnasNet-A1 (with squeeze-excite), the architecture of the MnasNet
  paper's Table/Fig. 7; nn-Meter's TF graph is markedly slower on the VPU than
  torchvision's SE-free ``mnasnet1_0`` (41.4 vs 24.4 ms), which only the SE variant
  explains. ``mnasnet_b1`` (torchvision-like ``mnasnet1_0``) is kept for reference.
* ``googlenet`` is GoogLeNet with BN after every conv and the paper's 5x5 branch,
  no auxiliary heads. ``densenet`` is DenseNet-121. ``resnet50`` is v1.5 (stride on
  the 3x3). VGG and AlexNet are the plain (no BN) torchvision-style layouts.
* ``proxylessnas`` is ProxylessNAS-Mobile as published (Cai et al., ICLR 2019):
  stem 32, MB1 k3 16, then stages 32/40/80/96/192/320.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NUM_CLASSES = 1000
INPUT_SHAPE = (1, 3, 224, 224)


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1, act: type[nn.Module] | None = nn.ReLU,
         groups: int = 1, bn: bool = True, pad: int | None = None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2 if pad is None else pad, groups=groups,
                                         bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act())
    return layers


def _head(cin: int, hidden: tuple[int, ...] = (), act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(cin, h), act()]
        cin = h
    layers.append(nn.Linear(cin, NUM_CLASSES))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- AlexNet, VGG


def alexnet() -> nn.Module:
    c = [64, 192, 384, 256, 256]
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, 1, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, 1, 1), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, NUM_CLASSES),
    )


_VGG = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def _vgg(depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for n, cout in zip(_VGG[depth], (64, 128, 256, 512, 512), strict=True):
        for _ in range(n):
            layers += _cbr(cin, cout, 3, bn=False)
            cin = cout
        layers.append(nn.MaxPool2d(2, 2))
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, NUM_CLASSES)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- ResNet


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(*_cbr(cin, width, 3, stride), *_cbr(width, cout, 3, act=None))
        self.short = (nn.Sequential(*_cbr(cin, cout, 1, stride, act=None, pad=0))
                      if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class _Bottleneck(_Basic):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__(cin, width, stride)
        cout = width * self.expansion
        self.body = nn.Sequential(*_cbr(cin, width, 1), *_cbr(width, width, 3, stride),
                                  *_cbr(width, cout, 1, act=None))


class _WideBottleneck(_Basic):
    """Wide ResNet-50-2's bottleneck: the 3x3 is twice as wide, the block's output as ResNet-50's."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__(cin, width, stride)
        cout, inner = width * self.expansion, 2 * width
        self.body = nn.Sequential(*_cbr(cin, inner, 1), *_cbr(inner, inner, 3, stride),
                                  *_cbr(inner, cout, 1, act=None))


def _resnet(block: type[_Basic], layers: tuple[int, ...]) -> nn.Module:
    mods: list[nn.Module] = [*_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(layers):
        width = 64 * 2**i
        for j in range(n):
            mods.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
            cin = width * block.expansion
    mods.append(_head(cin))
    return nn.Sequential(*mods)


# --------------------------------------------------------------------------- DenseNet-121


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32, bn_size: int = 4):
        super().__init__()
        self.f = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.f(x)], 1)


def densenet121() -> nn.Module:
    growth, blocks = 32, (6, 12, 24, 16)
    mods: list[nn.Module] = [*_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate(blocks):
        for _ in range(n):
            mods.append(_DenseLayer(c, growth))
            c += growth
        if i < len(blocks) - 1:
            mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            c //= 2
    mods += [nn.BatchNorm2d(c), nn.ReLU(), _head(c)]
    return nn.Sequential(*mods)


# --------------------------------------------------------------------------- GoogLeNet


class _Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int):
        super().__init__()
        self.b1 = nn.Sequential(*_cbr(cin, c1, 1))
        self.b2 = nn.Sequential(*_cbr(cin, c3r, 1), *_cbr(c3r, c3, 3))
        self.b3 = nn.Sequential(*_cbr(cin, c5r, 1), *_cbr(c5r, c5, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(cin, pp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def googlenet() -> nn.Module:
    i = _Inception
    return nn.Sequential(
        *_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), *_cbr(64, 64, 1), *_cbr(64, 192, 3), nn.MaxPool2d(3, 2, 1),
        i(192, 64, 96, 128, 16, 32, 32), i(256, 128, 128, 192, 32, 96, 64), nn.MaxPool2d(3, 2, 1),
        i(480, 192, 96, 208, 16, 48, 64), i(512, 160, 112, 224, 24, 64, 64), i(512, 128, 128, 256, 24, 64, 64),
        i(512, 112, 144, 288, 32, 64, 64), i(528, 256, 160, 320, 32, 128, 128), nn.MaxPool2d(3, 2, 1),
        i(832, 256, 160, 320, 32, 128, 128), i(832, 384, 192, 384, 48, 128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1024, NUM_CLASSES),
    )


# --------------------------------------------------------------------------- SqueezeNet 1.0


class _Fire(nn.Module):
    def __init__(self, cin: int, s: int, e: int):
        super().__init__()
        self.sq = nn.Sequential(*_cbr(cin, s, 1, bn=False))
        self.e1 = nn.Sequential(*_cbr(s, e, 1, bn=False))
        self.e3 = nn.Sequential(*_cbr(s, e, 3, bn=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sq(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet1_0() -> nn.Module:
    f = _Fire
    return nn.Sequential(
        nn.Conv2d(3, 96, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        f(96, 16, 64), f(128, 16, 64), f(128, 32, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        f(256, 32, 128), f(256, 48, 192), f(384, 48, 192), f(384, 64, 256), nn.MaxPool2d(3, 2, ceil_mode=True),
        f(512, 64, 256), nn.Dropout(), nn.Conv2d(512, NUM_CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


# --------------------------------------------------------------------------- mobile blocks


class _SE(nn.Module):
    """Squeeze-excite: global pool, 1x1 reduce + ReLU, 1x1 expand + gate, channel-wise scale."""

    def __init__(self, c: int, reduced: int, gate: type[nn.Module] = nn.Hardsigmoid):
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, reduced, 1), nn.ReLU(),
                               nn.Conv2d(reduced, c, 1), gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


class _MB(nn.Module):
    """Inverted residual: [1x1 expand] -> dw kxk -> [SE] -> act -> 1x1 project (+ residual).

    ``act_after_se`` puts the dw activation after SE (nn-Meter's MobileNetV3 graphs);
    otherwise it follows the dw conv's BN (MobileNetV2/MnasNet/ProxylessNAS).
    """

    def __init__(self, cin: int, cout: int, k: int, s: int, mid: int, act: type[nn.Module] = nn.ReLU6,
                 se: int = 0, expand: bool | None = None, act_after_se: bool = False,
                 se_gate: type[nn.Module] = nn.Hardsigmoid):
        super().__init__()
        expand = mid != cin if expand is None else expand
        layers: list[nn.Module] = _cbr(cin, mid, 1, act=act) if expand else []
        layers += _cbr(mid, mid, k, s, groups=mid, act=None if (se and act_after_se) else act)
        if se:
            layers.append(_SE(mid, se, se_gate))
            if act_after_se:
                layers.append(act())
        layers += _cbr(mid, cout, 1, act=None)
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenetv1() -> nn.Module:
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    mods: list[nn.Module] = _cbr(3, 32, 3, 2)
    c = 32
    for cout, s in cfg:
        mods += _cbr(c, c, 3, s, groups=c) + _cbr(c, cout, 1)
        c = cout
    mods.append(_head(c))
    return nn.Sequential(*mods)


def mobilenetv2() -> nn.Module:
    # (expansion, out, repeats, stride) -- Sandler et al. 2018, Table 2
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1)]
    mods: list[nn.Module] = _cbr(3, 32, 3, 2, act=nn.ReLU6)
    c = 32
    for t, cout, n, s in cfg:
        for i in range(n):
            mods.append(_MB(c, cout, 3, s if i == 0 else 1, c * t))
            c = cout
    mods += _cbr(c, 1280, 1, act=nn.ReLU6) + [_head(1280)]
    return nn.Sequential(*mods)


def _mbv3(cfg: list[tuple], head: int) -> nn.Module:
    hs, re = nn.Hardswish, nn.ReLU
    mods: list[nn.Module] = _cbr(3, 16, 3, 2, act=hs)
    c = 16
    for k, mid, cout, se, act, s in cfg:
        mods.append(_MB(c, cout, k, s, mid, act=hs if act == "HS" else re, se=mid // 4 if se else 0,
                        expand=True, act_after_se=True))
        c = cout
    mods += _cbr(c, head, 1, act=hs) + [_head(head)]
    return nn.Sequential(*mods)


def mobilenetv3large() -> nn.Module:
    # (kernel, exp, out, SE, act, stride) -- Howard et al. 2019, Table 1
    cfg = [(3, 16, 16, 0, "RE", 1), (3, 64, 24, 0, "RE", 2), (3, 72, 24, 0, "RE", 1), (5, 72, 40, 1, "RE", 2),
           (5, 120, 40, 1, "RE", 1), (5, 120, 40, 1, "RE", 1), (3, 240, 80, 0, "HS", 2), (3, 200, 80, 0, "HS", 1),
           (3, 184, 80, 0, "HS", 1), (3, 184, 80, 0, "HS", 1), (3, 480, 112, 1, "HS", 1),
           (3, 672, 112, 1, "HS", 1), (5, 672, 160, 1, "HS", 2), (5, 960, 160, 1, "HS", 1),
           (5, 960, 160, 1, "HS", 1)]
    return _mbv3(cfg, 1280)


def mobilenetv3small() -> nn.Module:
    # (kernel, exp, out, SE, act, stride) -- Howard et al. 2019, Table 2, as in nn-Meter's IR
    cfg = [(3, 16, 16, 1, "RE", 2), (3, 72, 24, 0, "RE", 2), (3, 88, 24, 0, "RE", 1), (5, 96, 40, 1, "HS", 2),
           (5, 240, 40, 1, "HS", 1), (5, 240, 40, 1, "HS", 1), (5, 120, 48, 1, "HS", 1),
           (5, 144, 48, 1, "HS", 1), (5, 288, 96, 1, "HS", 2), (5, 576, 96, 1, "HS", 1),
           (5, 576, 96, 1, "HS", 1)]
    return _mbv3(cfg, 1024)


def _mobile_net(stem: int, first: int, cfg: list[tuple], head: int = 1280, se_gate=nn.Sigmoid) -> nn.Module:
    """Stem conv s2, a separable first block, then (expansion, kernel, out, repeats, stride, se) stages."""
    mods: list[nn.Module] = _cbr(3, stem, 3, 2) + _cbr(stem, stem, 3, 1, groups=stem) + _cbr(stem, first, 1, act=None)
    c = first
    for t, k, cout, n, s, se in cfg:
        for i in range(n):
            mods.append(_MB(c, cout, k, s if i == 0 else 1, c * t, act=nn.ReLU,
                            se=max(1, int(c * se)) if se else 0, se_gate=se_gate))
            c = cout
    mods += _cbr(c, head, 1) + [_head(head)]
    return nn.Sequential(*mods)


def mnasnet_a1() -> nn.Module:
    # Tan et al. 2019, Fig. 7 (MnasNet-A1); SE squeezes by 4 relative to the block input
    cfg = [(6, 3, 24, 2, 2, 0), (3, 5, 40, 3, 2, 0.25), (6, 3, 80, 4, 2, 0), (6, 3, 112, 2, 1, 0.25),
           (6, 5, 160, 3, 2, 0.25), (6, 3, 320, 1, 1, 0)]
    return _mobile_net(32, 16, cfg)


def mnasnet_b1() -> nn.Module:
    # torchvision-like mnasnet1_0 (MnasNet-B1, no SE)
    cfg = [(3, 3, 24, 3, 2, 0), (3, 5, 40, 3, 2, 0), (6, 5, 80, 3, 2, 0), (6, 3, 96, 2, 1, 0),
           (6, 5, 192, 4, 2, 0), (6, 3, 320, 1, 1, 0)]
    return _mobile_net(32, 16, cfg)


def proxylessnas_mobile() -> nn.Module:
    # ProxylessNAS-Mobile (Cai et al., ICLR 2019): per stage (expansion, kernel) of the kept blocks;
    # the searched "zero" (skip) blocks of the 32-channel stage are left out.
    stages = [
        (32, 2, [(3, 5), (3, 3)]),
        (40, 2, [(3, 7), (3, 3), (3, 5), (3, 5)]),
        (80, 2, [(6, 7), (3, 5), (3, 5), (3, 5)]),
        (96, 1, [(6, 5), (3, 5), (3, 5), (3, 5)]),
        (192, 2, [(6, 7), (6, 7), (3, 7), (3, 7)]),
        (320, 1, [(6, 7)]),
    ]
    mods: list[nn.Module] = _cbr(3, 32, 3, 2, act=nn.ReLU6) + [_MB(32, 16, 3, 1, 32)]
    c = 16
    for cout, s, blocks in stages:
        for i, (t, k) in enumerate(blocks):
            mods.append(_MB(c, cout, k, s if i == 0 else 1, c * t))
            c = cout
    mods += _cbr(c, 1280, 1, act=nn.ReLU6) + [_head(1280)]
    return nn.Sequential(*mods)


# --------------------------------------------------------------------------- ShuffleNetV2 x1.0


class _ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.left = nn.Sequential(*_cbr(cin, cin, 3, stride, groups=cin, act=None), *_cbr(cin, half, 1))
        rin = cin if stride > 1 else half
        self.right = nn.Sequential(*_cbr(rin, half, 1), *_cbr(half, half, 3, stride, groups=half, act=None),
                                   *_cbr(half, half, 1))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return self.shuffle(out)


def shufflenetv2() -> nn.Module:
    mods: list[nn.Module] = _cbr(3, 24, 3, 2) + [nn.MaxPool2d(3, 2, 1)]
    c = 24
    for cout, n in ((116, 4), (232, 8), (464, 4)):
        for i in range(n):
            mods.append(_ShuffleUnit(c, cout, 2 if i == 0 else 1))
            c = cout
    mods += _cbr(c, 1024, 1) + [_head(1024)]
    return nn.Sequential(*mods)


# --------------------------------------------------------------------------- registry

REFERENCE_NETS: dict[str, Callable[[], nn.Module]] = {
    "alexnet": alexnet,
    "densenet": densenet121,
    "googlenet": googlenet,
    "mnasnet": mnasnet_a1,
    "mobilenetv1": mobilenetv1,
    "mobilenetv2": mobilenetv2,
    "mobilenetv3large": mobilenetv3large,
    "mobilenetv3small": mobilenetv3small,
    "proxylessnas": proxylessnas_mobile,
    "resnet18": lambda: _resnet(_Basic, (2, 2, 2, 2)),
    "resnet34": lambda: _resnet(_Basic, (3, 4, 6, 3)),
    "resnet50": lambda: _resnet(_Bottleneck, (3, 4, 6, 3)),
    "shufflenetv2": shufflenetv2,
    "squeezenet": squeezenet1_0,
    "vgg11": lambda: _vgg(11),
    "vgg13": lambda: _vgg(13),
    "vgg16": lambda: _vgg(16),
    "vgg19": lambda: _vgg(19),
}


# nn-Meter's torch-conversion reference rows (data/nnmeter_reference_latency_torch.csv: torchvision models through
# its ONNX-based torch converter) -> our builder; a held-out check of the stand-ins, never fitted. Not built:
# densenet161, inception_v3, resnext50_32x4d (nn-Meter gives it wide_resnet50_2's latency: its conv features
# ignore groups). googlenet is ours (5x5 branch), torchvision's has a 3x3 there.
TORCH_ROW_NETS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": REFERENCE_NETS["resnet18"], "alexnet": alexnet, "vgg16": REFERENCE_NETS["vgg16"],
    "squeezenet": squeezenet1_0, "googlenet": googlenet, "shufflenet_v2": shufflenetv2, "mobilenet_v2": mobilenetv2,
    "mnasnet": mnasnet_b1, "wide_resnet50_2": lambda: _resnet(_WideBottleneck, (3, 4, 6, 3)),
}


def build(name: str) -> nn.Module:
    """A fresh reference network by its nn-Meter test-set name."""
    try:
        return REFERENCE_NETS[name]()
    except KeyError:
        raise ValueError(f"unknown reference net {name!r}; valid: {', '.join(REFERENCE_NETS)}") from None
