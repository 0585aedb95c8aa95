"""Quadratic layers (QuadraLib / QuadraNet).

* :class:`QuadDWConv2d` -- quadratic depthwise convolution
  ``y = DWa(x) * DWb(x) + DWc(x)`` as three separate depthwise convs with bias
  (the official code's choice: one grouped conv with 3C outputs is slower on CPU).
  ``memory_saving=True`` uses :class:`QuadDWFunction`, which saves only the input and
  the weights and recomputes the two projections in backward (QuadraLib's "hybrid
  back-propagation"; QuadraNet paper Eq. 8).
* :class:`QuadLinear` -- quadratic neuron over features, low-rank form
  ``(Wa x) * (Wb x) + Wc x`` and QuadraLib's types T2 ``W x^2``, T3 ``(W x)^2``,
  T4 ``(Wa x) * (Wb x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEURON_TYPES = ("lowrank", "t2", "t3", "t4")


class QuadDWFunction(torch.autograd.Function):
    """``dw(x, wa, ba) * dw(x, wb, bb) + dw(x, wc, bc)`` saving only x and the weights.

    Backward recomputes ``a = DWa(x)`` and ``b = DWb(x)``: the gradient reaching DWa is
    ``g * b`` and the one reaching DWb is ``g * a``; DWc receives ``g`` directly.
    """

    @staticmethod
    def forward(ctx, x, wa, ba, wb, bb, wc, bc, stride: int, padding: int):
        groups = x.shape[1]
        a = F.conv2d(x, wa, ba, stride, padding, groups=groups)
        b = F.conv2d(x, wb, bb, stride, padding, groups=groups)
        y = torch.addcmul(F.conv2d(x, wc, bc, stride, padding, groups=groups), a, b)
        ctx.save_for_backward(x, wa, ba, wb, bb, wc)
        ctx.conf = (stride, padding)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, wa, ba, wb, bb, wc = ctx.saved_tensors
        stride, padding = ctx.conf
        groups = x.shape[1]
        with torch.no_grad():
            a = F.conv2d(x, wa, ba, stride, padding, groups=groups)
            b = F.conv2d(x, wb, bb, stride, padding, groups=groups)
        need_x = ctx.needs_input_grad[0]
        grads_x, grads = [], []
        for w, g in ((wa, grad_y * b), (wb, grad_y * a), (wc, grad_y)):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g, x, w, [w.shape[0]], [stride, stride], [padding, padding], [1, 1],
                False, [0, 0], groups, [need_x, True, True],
            )
            grads_x.append(gx)
            grads += [gw, gb]
        grad_x = grads_x[0] + grads_x[1] + grads_x[2] if need_x else None
        return (grad_x, *grads, None, None)


class QuadDWConv2d(nn.Module):
    """Quadratic depthwise convolution ``DWa(x) * DWb(x) + DWc(x)`` (any odd kernel)."""

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1, memory_saving: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        pad = kernel_size // 2
        self.dwa, self.dwb, self.dwc = (
            nn.Conv2d(channels, channels, kernel_size, stride, pad, groups=channels) for _ in range(3)
        )
        self.stride, self.padding, self.memory_saving = stride, pad, memory_saving

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_saving and torch.is_grad_enabled():
            return QuadDWFunction.apply(
                x, self.dwa.weight, self.dwa.bias, self.dwb.weight, self.dwb.bias,
                self.dwc.weight, self.dwc.bias, self.stride, self.padding,
            )
        return self.dwa(x) * self.dwb(x) + self.dwc(x)


class QuadLinear(nn.Module):
    """Quadratic neuron layer over the last dimension.

    ``lowrank``: (Wa x)(Wb x) + Wc x   ``t2``: W x^2 + Wc x   ``t3``: (W x)^2 + Wc x
    ``t4``: (Wa x)(Wb x). Types other than t4 keep a linear term so they can start as a
    plain linear layer (QuadraLib notes; T1 x^T W x is left out: n^2 weights per neuron).
    """

    def __init__(self, in_features: int, out_features: int, neuron: str = "lowrank", bias: bool = True):
        super().__init__()
        if neuron not in NEURON_TYPES:
            raise ValueError(f"unknown neuron type {neuron!r}; valid: {', '.join(NEURON_TYPES)}")
        self.neuron = neuron
        self.wa = nn.Linear(in_features, out_features, bias=bias)
        self.wb = nn.Linear(in_features, out_features, bias=bias) if neuron in ("lowrank", "t4") else None
        self.wc = nn.Linear(in_features, out_features, bias=bias) if neuron != "t4" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.neuron == "t2":
            quad = self.wa(x * x)
        elif self.neuron == "t3":
            quad = self.wa(x) ** 2
        else:
            quad = self.wa(x) * self.wb(x)
        return quad if self.wc is None else quad + self.wc(x)
