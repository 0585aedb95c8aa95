"""Blocks: QuadraBlock, the identity candidate, and first-order baselines.

Every searchable op is made by :func:`make_op` from its name:
``quadra_k{k}_e{e}``, ``convnext_k{k}_e{e}``, ``mbconv_k{k}_e{e}``, ``identity``, ``zero``.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.quadratic import QuadDWConv2d

LN_EPS = 1e-6
LAYER_SCALE_INIT = 1e-6
SKIP_OPS = ("identity", "zero")  # both keep the residual and skip the block (ProxylessNAS "zero")
_OP_RE = re.compile(r"^(quadra|convnext|mbconv)_k(\d+)_e(\d+)$")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (HorNet/ConvNeXt "channels_first")."""

    def __init__(self, channels: int, eps: float = LN_EPS):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample, scaled to keep the expectation."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _MetaFormerBlock(nn.Module):
    """x + DropPath(g1 * Mixer(LN(x))); x + DropPath(g2 * MLP(LN(x))) -- the QuadraNet/HorNet block."""

    def __init__(self, mixer: nn.Module, dim: int, expansion: int, drop_path: float,
                 layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.mixer = mixer
        self.gamma1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(expansion * dim, dim)
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.mixer(self.norm1(x)))
        y = self.fc2(self.act(self.fc1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma2 * y).permute(0, 3, 1, 2))


class QuadraBlock(_MetaFormerBlock):
    """QuadraBlock: quadratic depthwise kxk mixer + MLP with expansion e."""

    def __init__(self, dim: int, kernel: int = 7, expansion: int = 4, drop_path: float = 0.0,
                 memory_saving: bool = False, layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__(QuadDWConv2d(dim, kernel, memory_saving=memory_saving), dim, expansion, drop_path,
                         layer_scale_init)


class ConvNeXtBlock(_MetaFormerBlock):
    """The same block with a plain depthwise conv (the paper's first-order "ConvBlock")."""

    def __init__(self, dim: int, kernel: int = 7, expansion: int = 4, drop_path: float = 0.0,
                 layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__(nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim), dim, expansion, drop_path,
                         layer_scale_init)


class MBConv(nn.Module):
    """ProxylessNAS/MobileNetV2 inverted residual: 1x1 expand, dw k, 1x1 project (BN, ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, expansion: int = 6, stride: int = 1):
        super().__init__()
        mid = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def parse_op(name: str) -> tuple[str, int, int]:
    """``'quadra_k5_e2'`` -> ``('quadra', 5, 2)``; skip ops -> ``(name, 0, 0)``."""
    if name in SKIP_OPS:
        return name, 0, 0
    m = _OP_RE.match(name)
    if not m:
        raise ValueError(
            f"unknown op {name!r}; valid: quadra_k<k>_e<e>, convnext_k<k>_e<e>, mbconv_k<k>_e<e>, "
            f"{', '.join(SKIP_OPS)}"
        )
    return m.group(1), int(m.group(2)), int(m.group(3))


def make_op(name: str, in_ch: int, out_ch: int, stride: int = 1, drop_path: float = 0.0,
            memory_saving: bool = False, layer_scale_init: float = LAYER_SCALE_INIT) -> nn.Module:
    """Build a searchable op by name for a layer with the given channels and stride.

    ``layer_scale_init`` (QuadraBlock/ConvNeXt blocks) is 1e-6 as in QuadraNet; a supernet
    trained briefly needs a larger one, or every block starts as an identity and the
    architecture gradient cannot tell the candidates apart.
    """
    kind, k, e = parse_op(name)
    shape_kept = in_ch == out_ch and stride == 1
    if kind in SKIP_OPS:
        if not shape_kept:
            raise ValueError(f"{name} needs matching input/output shapes, got {in_ch}->{out_ch} stride {stride}")
        return nn.Identity()
    if kind == "mbconv":
        return MBConv(in_ch, out_ch, k, e, stride)
    if not shape_kept:
        raise ValueError(f"{name} keeps its shape; got {in_ch}->{out_ch} stride {stride}")
    if kind == "quadra":
        return QuadraBlock(in_ch, k, e, drop_path, memory_saving, layer_scale_init)
    return ConvNeXtBlock(in_ch, k, e, drop_path, layer_scale_init)


def init_weights(module: nn.Module) -> None:
    """Official QuadraNet init: conv/linear weights trunc-normal std 0.02, biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
