import pytest
import torch
import torch.nn.functional as F

from search_spaces.baseline_blocks import ConvBlock, ConvNeXtV1Block, GnConv, HorBlock, SkipBlock, SwinBlock
from search_spaces.blocks import ConvNeXtBlock


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def mlp_params(c, e):
    return 2 * e * c * c + e * c + c


def gnconv_params(c, order, k):
    dims = [c // 2**i for i in range(order)][::-1]
    s = sum(dims)
    pws = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(order - 1))
    return (2 * c * c + 2 * c) + s * (k * k + 1) + pws + (c * c + c)


BLOCKS = {
    "hor_o3": (lambda c: HorBlock(c, order=3), lambda c: gnconv_params(c, 3, 7) + 4 * c + mlp_params(c, 4) + 2 * c),
    "hor_o5_k3_e2": (lambda c: HorBlock(c, order=5, kernel=3, expansion=2),
                     lambda c: gnconv_params(c, 5, 3) + 4 * c + mlp_params(c, 2) + 2 * c),
    # norms, qkv, proj, relative position table (2w-1)^2 x heads, MLP
    "swin": (lambda c: SwinBlock(c, heads=c // 8), lambda c: 4 * c + 3 * c * c + 3 * c + c * c + c
             + 13 * 13 * (c // 8) + mlp_params(c, 4)),
    "swin_shift": (lambda c: SwinBlock(c, heads=2, shift=True), lambda c: 4 * c + 4 * c * c + 4 * c
                   + 13 * 13 * 2 + mlp_params(c, 4)),
    "convnext_v1": (lambda c: ConvNeXtV1Block(c), lambda c: 49 * c + c + 2 * c + mlp_params(c, 4) + c),
    "conv": (lambda c: ConvBlock(c), lambda c: 49 * c + c + 4 * c + mlp_params(c, 4) + 2 * c),
    "skip": (lambda c: SkipBlock(c), lambda c: 2 * c + mlp_params(c, 4) + c),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("hw", [14, 9, 4])  # a multiple of the window, padded, smaller than one window
def test_forward_backward_shape_and_params(name, hw):
    torch.manual_seed(0)
    make, formula = BLOCKS[name]
    block = make(32).train()
    assert n_params(block) == formula(32)
    with torch.no_grad():  # layer scales 1: every branch matters for the gradient check
        for pn, p in block.named_parameters():
            if "gamma" in pn:
                p.fill_(1.0)
    x = torch.randn(2, 32, hw, hw, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in block.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_convblock_is_the_paper_design():
    assert ConvBlock is ConvNeXtBlock  # QuadraBlock layout with a plain depthwise conv (paper, Table II)


def test_gnconv_recursion_by_hand():
    torch.manual_seed(0)
    g = GnConv(16, order=3, kernel=3, scale=0.5)
    assert g.dims == [4, 8, 16]
    x = torch.randn(1, 16, 5, 5)
    p0, q = g.proj_in(x).split((4, 28), 1)
    q = g.dwconv(q) * 0.5
    y = p0 * q[:, :4]
    y = g.pws[0](y) * q[:, 4:12]
    y = g.pws[1](y) * q[:, 12:]
    assert torch.allclose(g(x), g.proj_out(y), atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        GnConv(12, order=4)


def _naive_window_attention(block, x, shift):
    """Full attention over all tokens of the padded map; pairs outside one (shifted) window or
    across a wrap-around region are masked out; the bias comes from the relative position."""
    w, attn = block.window, block.attn
    b, h, wd, c = x.shape
    xp = F.pad(x, (0, 0, 0, -wd % w, 0, -h % w))
    hp, wp = xp.shape[1:3]
    r, s = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    r, s = ((r - shift) % hp).flatten(), ((s - shift) % wp).flatten()  # positions after the cyclic shift

    def region(v, n):
        return (v >= n - w).long() + (v >= n - shift).long() if shift else torch.zeros_like(v)

    same_win = ((r[:, None] // w) == (r[None] // w)) & ((s[:, None] // w) == (s[None] // w))
    same_reg = (region(r, hp)[:, None] == region(r, hp)[None]) & (region(s, wp)[:, None] == region(s, wp)[None])
    idx = (r[:, None] - r[None] + w - 1) * (2 * w - 1) + (s[:, None] - s[None] + w - 1)
    bias = attn.rel_bias[idx.clamp(0, (2 * w - 1) ** 2 - 1)].permute(2, 0, 1)  # heads, T, T
    tokens = xp.reshape(b, hp * wp, c)
    q, k, v = attn.qkv(tokens).reshape(b, -1, 3, attn.heads, c // attn.heads).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + bias
    logits = logits.masked_fill(~same_win, float("-inf")).masked_fill(same_win & ~same_reg, -100.0)
    out = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, hp * wp, c))
    return out.reshape(b, hp, wp, c)[:, :h, :wd]


@pytest.mark.parametrize("hw,shift", [(14, False), (14, True), (10, True), (7, True)])
def test_swin_window_attention_matches_naive_masked_attention(hw, shift):
    torch.manual_seed(0)
    block = SwinBlock(16, heads=2, window=7, shift=shift)
    with torch.no_grad():
        block.attn.rel_bias.normal_()
    x = torch.randn(2, hw, hw, 16)
    eff_shift = 3 if shift and hw > 7 else 0  # one window: never shifted
    torch.testing.assert_close(block._mix(x), _naive_window_attention(block, x, eff_shift), atol=1e-5, rtol=1e-5)


def test_swin_channels_last_matches_nchw():
    torch.manual_seed(0)
    a = SwinBlock(16, heads=2, shift=True)
    b = SwinBlock(16, heads=2, shift=True, channels_last=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 16, 9, 9)
    torch.testing.assert_close(a(x), b(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
