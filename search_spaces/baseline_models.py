"""Fixed baseline models of the QuadraNet paper's Table I: ConvNeXt-T, HorNet-T (7x7 gnConv), Swin-T.

Registered by name in :data:`BASELINES` (``python -m search_spaces.summary convnext_t``). Each is a
:class:`PyramidNet` with the parts of :class:`~search_spaces.arch.Net` (stem, transitions,
stages, head), so the same summary and timing tools apply. Configurations from the papers:

* ConvNeXt-T (Liu et al. 2022): widths 96-768, depths 3,3,9,3, dw 7x7; 28.6M params, 4.5 GMACs.
* HorNet-T 7x7 (Rao et al. 2022): widths 64-512, depths 2,3,18,2, gnConv orders 2,3,4,5 per stage,
  dw 7x7 scaled by 1/3; 22M params, 4.0 GMACs.
* Swin-T (Liu et al. 2021): widths 96-768, depths 2,2,6,2, heads 3,6,12,24, window 7; 28.3M params,
  4.5 GMACs. Works in NHWC; patch merging between stages.

ConvNeXt and HorNet share QuadraNet's macro (4x4 patchify stem + LayerNorm, LayerNorm + 2x2
strided conv between stages, pool/LayerNorm/Linear head). Weights are initialised as in all
three papers: conv/linear trunc-normal std 0.02, biases 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from search_spaces.arch import forward_stages
from search_spaces.baseline_blocks import ConvNeXtV1Block, HorBlock, SwinBlock
from search_spaces.blocks import LN_EPS, LayerNorm2d, init_weights

# name -> (params in millions, GMACs at 224x224, 1000 classes) as each model's own paper reports them
PAPER_SIZE = {"convnext_t": (28.6, 4.5), "hornet_t": (22.0, 4.0), "swin_t": (28.3, 4.5)}


class PyramidNet(nn.Module):
    """Stem -> stages (transition + blocks) -> head, the layout of :class:`search_spaces.arch.Net`."""

    def __init__(self, stem: nn.Module, transitions: list[nn.Module], stages: list[list[nn.Module]],
                 head: nn.Module, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.stem, self.head = stem, head
        self.transitions = nn.ModuleList(transitions)
        self.stages = nn.ModuleList(nn.ModuleList(s) for s in stages)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def layers(self) -> list[nn.Module]:
        return [layer for stage in self.stages for layer in stage]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return forward_stages(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _stem(c_in: int, width: int, stride: int) -> tuple[nn.Conv2d, int, int]:
    k, pad = (stride, 0) if stride > 1 else (3, 1)
    return nn.Conv2d(c_in, width, k, stride, pad), k, pad


def _rates(depths, drop_path_rate: float) -> list[float]:
    return torch.linspace(0, drop_path_rate, max(sum(depths), 1)).tolist()


def _convnet(make_block: Callable[[int, int, float], nn.Module], widths, depths, drop_path_rate: float,
             input_shape, num_classes: int, stem_stride: int) -> PyramidNet:
    """ConvNeXt/HorNet/QuadraNet macro; ``make_block(stage, width, drop_path)``."""
    rates, i = _rates(depths, drop_path_rate), 0
    stem = nn.Sequential(_stem(input_shape[0], widths[0], stem_stride)[0], LayerNorm2d(widths[0]))
    transitions: list[nn.Module] = [nn.Identity()]
    transitions += [nn.Sequential(LayerNorm2d(widths[s - 1]), nn.Conv2d(widths[s - 1], widths[s], 2, 2))
                    for s in range(1, len(widths))]
    stages = []
    for s, (w, d) in enumerate(zip(widths, depths)):
        stages.append([make_block(s, w, rates[i + j]) for j in range(d)])
        i += d
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(widths[-1], eps=LN_EPS),
                         nn.Linear(widths[-1], num_classes))
    net = PyramidNet(stem, transitions, stages, head, input_shape, num_classes)
    init_weights(net)
    return net


def convnext(widths=(96, 192, 384, 768), depths=(3, 3, 9, 3), kernel: int = 7, drop_path_rate: float = 0.0,
             input_shape=(3, 224, 224), num_classes: int = 1000, stem_stride: int = 4) -> PyramidNet:
    return _convnet(lambda s, w, dp: ConvNeXtV1Block(w, kernel, 4, dp), widths, depths, drop_path_rate,
                    input_shape, num_classes, stem_stride)


def hornet(widths=(64, 128, 256, 512), depths=(2, 3, 18, 2), orders=(2, 3, 4, 5), kernel: int = 7,
           drop_path_rate: float = 0.0, input_shape=(3, 224, 224), num_classes: int = 1000,
           stem_stride: int = 4) -> PyramidNet:
    return _convnet(lambda s, w, dp: HorBlock(w, orders[s], kernel, 4, dp), widths, depths, drop_path_rate,
                    input_shape, num_classes, stem_stride)


class PatchEmbed(nn.Module):
    """Swin stem: patchify conv, then NHWC + LayerNorm."""

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.proj = _stem(c_in, width, stride)[0]
        self.norm = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin transition (NHWC): each 2x2 neighbourhood concatenated (4C), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int, out: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5)
        self.reduction = nn.Linear(4 * dim, out or 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class TokenPool(nn.Module):
    """Mean over H and W of an NHWC map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2))


def swin(widths=(96, 192, 384, 768), depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window: int = 7,
         drop_path_rate: float = 0.0, input_shape=(3, 224, 224), num_classes: int = 1000,
         stem_stride: int = 4) -> PyramidNet:
    rates, i = _rates(depths, drop_path_rate), 0
    stem = PatchEmbed(input_shape[0], widths[0], stem_stride)
    transitions = [nn.Identity(), *(PatchMerging(widths[s - 1], widths[s]) for s in range(1, len(widths)))]
    stages = []
    for s, (w, d) in enumerate(zip(widths, depths)):
        stages.append([SwinBlock(w, heads[s], window, shift=j % 2 == 1, drop_path=rates[i + j], channels_last=True)
                       for j in range(d)])
        i += d
    head = nn.Sequential(nn.LayerNorm(widths[-1], eps=1e-5), TokenPool(), nn.Linear(widths[-1], num_classes))
    net = PyramidNet(stem, transitions, stages, head, input_shape, num_classes)
    init_weights(net)
    return net


BASELINES: dict[str, Callable[..., PyramidNet]] = {"convnext_t": convnext, "hornet_t": hornet, "swin_t": swin}


def baseline_model(name: str, drop_path_rate: float = 0.0, input_shape=(3, 224, 224), num_classes: int = 1000,
                   stem_stride: int = 4) -> PyramidNet:
    """A registered baseline (``convnext_t``, ``hornet_t``, ``swin_t``) in its paper's configuration."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline model {name!r}; valid: {', '.join(BASELINES)}")
    return BASELINES[name](drop_path_rate=drop_path_rate, input_shape=input_shape, num_classes=num_classes,
                           stem_stride=stem_stride)
