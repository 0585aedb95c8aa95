"""QuadraNet V2 quadratic adaptation: make a first-order model quadratic without changing it.

Each depthwise conv becomes a :class:`QuadDWConv2d` whose linear branch ``DWc`` holds the
original weights and whose quadratic term starts at zero (``DWa`` zero, ``DWb`` trunc-normal),
so the converted model computes exactly the original function at step 0, while ``DWa``
receives gradient ``g * DWb(x)`` from the first step on.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.quadratic import QuadDWConv2d


def _convertible(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels
            and m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] % 2 == 1
            and m.padding == (m.kernel_size[0] // 2,) * 2 and m.dilation == (1, 1)
            and m.stride[0] == m.stride[1] and m.padding_mode == "zeros")


@torch.no_grad()
def quadratize(model: nn.Module, memory_saving: bool = False) -> int:
    """Replace depthwise convs in place; returns how many were converted."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not _convertible(child):
                continue
            q = QuadDWConv2d(child.in_channels, child.kernel_size[0], child.stride[0], memory_saving)
            q = q.to(child.weight.device, child.weight.dtype)
            q.dwc.weight.copy_(child.weight)
            if child.bias is not None:
                q.dwc.bias.copy_(child.bias)
            else:
                q.dwc.bias.zero_()
            q.dwa.weight.zero_()
            q.dwa.bias.zero_()
            nn.init.trunc_normal_(q.dwb.weight, std=0.02)
            q.dwb.bias.zero_()
            setattr(parent, name, q)
            count += 1
    return count
