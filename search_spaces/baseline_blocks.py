"""Baseline blocks the QuadraNet paper compares against (Tables I and II), in plain torch.

* :class:`HorBlock` -- HorNet (Rao et al., NeurIPS 2022): the QuadraBlock layout with a
  recursive gated convolution :class:`GnConv` of order n (7x7 depthwise) as spatial mixer.
* :class:`SwinBlock` -- Swin Transformer (Liu et al., ICCV 2021): multi-head self-attention in
  7x7 windows (shifted by half a window on alternate layers) with a relative position bias,
  then an MLP; pre-norm, two residuals. Maps that are not a multiple of the window are padded.
* :class:`ConvNeXtV1Block` -- ConvNeXt (Liu et al., CVPR 2022): dw 7x7 -> LayerNorm -> MLP ->
  layer scale, one residual.
* :data:`ConvBlock` -- the QuadraNet paper's ConvBlock: "the same block design but only with
  the conventional depth-wise convolution", i.e. :class:`~search_spaces.blocks.ConvNeXtBlock`
  (the ``convnext_k<k>_e<e>`` search op).
* :class:`SkipBlock` -- the paper's SkipBlock: the spatial mixer and its residual removed,
  only the MLP branch ``x + g2 * MLP(LN(x))`` is left.

All take and return NCHW tensors (``SwinBlock(channels_last=True)`` works on NHWC, as the
Swin model does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.blocks import LAYER_SCALE_INIT, LN_EPS, ConvNeXtBlock, DropPath, _MetaFormerBlock

ConvBlock = ConvNeXtBlock  # the paper's ConvBlock is exactly the QuadraBlock layout with a plain dw conv


class GnConv(nn.Module):
    """Recursive gated conv of order n (HorNet Eq. 3-4), channel widths C/2^(n-1), ..., C/2, C.

    ``proj_in`` (1x1, C -> 2C) gives p0 and the gates q; one depthwise kxk conv (scaled by
    ``scale``) runs over all gates; ``p_{k+1} = pw_k(p_k) * q_k``; ``proj_out`` (1x1, C -> C).
    """

    def __init__(self, dim: int, order: int = 3, kernel: int = 7, scale: float = 1.0 / 3.0):
        super().__init__()
        if order < 1 or dim % 2 ** (order - 1):
            raise ValueError(f"dim {dim} must be divisible by 2^(order-1) = {2 ** (order - 1)}")
        self.dims = [dim // 2**i for i in range(order)][::-1]
        gates = sum(self.dims)
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(gates, gates, kernel, padding=kernel // 2, groups=gates)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.proj_in(x).split((self.dims[0], sum(self.dims)), 1)
        gates = (self.dwconv(q) * self.scale).split(self.dims, 1)
        y = p * gates[0]
        for pw, g in zip(self.pws, gates[1:]):
            y = pw(y) * g
        return self.proj_out(y)


class HorBlock(_MetaFormerBlock):
    """HorNet block: x + g1 * gnConv(LN(x)); x + g2 * MLP(LN(x)) (expansion 4 in HorNet)."""

    def __init__(self, dim: int, order: int = 3, kernel: int = 7, expansion: int = 4, drop_path: float = 0.0,
                 layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__(GnConv(dim, order, kernel), dim, expansion, drop_path, layer_scale_init)


class ConvNeXtV1Block(nn.Module):
    """ConvNeXt block: x + DropPath(g * MLP(LN(DWConv_k(x)))), one residual, LN eps 1e-6."""

    def __init__(self, dim: int, kernel: int = 7, expansion: int = 4, drop_path: float = 0.0,
                 layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(expansion * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma * y).permute(0, 3, 1, 2))


class SkipBlock(nn.Module):
    """The paper's SkipBlock: no spatial interaction, only x + DropPath(g2 * MLP(LN(x)))."""

    def __init__(self, dim: int, expansion: int = 4, drop_path: float = 0.0,
                 layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(expansion * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma * y).permute(0, 3, 1, 2))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows of w x w tokens with a learned relative position bias."""

    def __init__(self, dim: int, heads: int, window: int = 7):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.window, self.scale = heads, window, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        ij = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = ij[:, :, None] - ij[:, None, :] + window - 1  # 2, N, N; each in [0, 2w-2]
        self.register_buffer("rel_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (windows*B, N, C); ``mask``: (windows, N, N) additive, or None."""
        bn, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bn, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.rel_bias[self.rel_index].permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bn // nw, nw, self.heads, n, n) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(bn, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bn, n, c))


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C)."""
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def _unwindows(x: torch.Tensor, w: int, b: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`_windows`."""
    return x.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, -1)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask (windows, N, N): -100 between tokens that the cyclic shift brought together."""
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        region[:, hs, ws, :] = i
    ids = _windows(region, window).squeeze(-1)  # windows, N
    return (ids[:, None, :] != ids[:, :, None]).float() * -100.0


class SwinBlock(nn.Module):
    """Swin block: x + WMSA(LN(x)); x + MLP(LN(x)). ``shift``: shifted windows (odd layers in Swin).

    The map is zero-padded (after the norm) to a multiple of the window, as in Swin's detection
    code. A map that fits in one window is never shifted (Swin does the same).
    """

    def __init__(self, dim: int, heads: int, window: int = 7, shift: bool = False, expansion: int = 4,
                 drop_path: float = 0.0, channels_last: bool = False):
        super().__init__()
        self.window, self.shift, self.channels_last = window, shift, channels_last
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(expansion * dim, dim)
        self.drop_path = DropPath(drop_path)
        self._masks: dict[tuple, torch.Tensor] = {}

    def _mask(self, hp: int, wp: int, shift: int, device: torch.device) -> torch.Tensor:
        key = (hp, wp, shift, device)
        if key not in self._masks:
            self._masks[key] = shifted_window_mask(hp, wp, self.window, shift).to(device)
        return self._masks[key]

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        win = self.window
        ph, pw = -h % win, -w % win
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        shift = win // 2 if self.shift and (hp > win or wp > win) else 0
        if shift:
            x = torch.roll(x, (-shift, -shift), (1, 2))
        y = self.attn(_windows(x, win), self._mask(hp, wp, shift, x.device) if shift else None)
        y = _unwindows(y, win, b, hp, wp)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        return y[:, :h, :w] if ph or pw else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self._mix(self.norm1(x)))
        x = x + self.drop_path(self.fc2(self.act(self.fc1(self.norm2(x)))))
        return x if self.channels_last else x.permute(0, 3, 1, 2)
