import pytest
import torch

from search_spaces.blocks import MBConv, QuadraBlock, make_op, parse_op


def _all_params_get_grad(module, x):
    module.train()
    module(x).square().mean().backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("op", ["quadra_k3_e2", "quadra_k7_e4", "convnext_k5_e2", "mbconv_k3_e3", "mbconv_k7_e6"])
@pytest.mark.parametrize("hw", [28, 32])
def test_blocks_forward_backward(op, hw):
    torch.manual_seed(0)
    block = make_op(op, 16, 16, 1, drop_path=0.1)
    x = torch.randn(2, 16, hw // 4, hw // 4)
    assert block(x).shape == x.shape
    _all_params_get_grad(block, x)


def test_quadrablock_structure_matches_design():
    b = QuadraBlock(8, kernel=5, expansion=2)
    assert b.gamma1.flatten().eq(1e-6).all() and b.gamma2.eq(1e-6).all()
    assert b.norm1.eps == 1e-6 and b.norm2.eps == 1e-6
    assert b.fc1.out_features == 16 and b.mixer.dwa.kernel_size == (5, 5)
    # params 2eC^2 + (3k^2 + small) C
    n = sum(p.numel() for p in b.parameters())
    fc, dw, norms, fc_bias, scales = 2 * 2 * 8 * 8, 3 * (25 * 8 + 8), 2 * 2 * 8, 2 * 8 + 8, 2 * 8
    assert n == fc + dw + norms + fc_bias + scales


def test_quadrablock_is_residual_at_init_scale():
    b = QuadraBlock(8).eval()
    x = torch.randn(1, 8, 7, 7)
    assert torch.allclose(b(x), x, atol=1e-3)


def test_mbconv_stride_and_residual():
    m = MBConv(16, 24, 5, 6, 2)
    assert m(torch.randn(1, 16, 14, 14)).shape == (1, 24, 7, 7)
    assert not m.residual and MBConv(8, 8, 3, 3, 1).residual


def test_identity_and_errors():
    x = torch.randn(1, 4, 5, 5)
    assert make_op("identity", 4, 4)(x) is x
    with pytest.raises(ValueError, match="matching"):
        make_op("zero", 4, 8, 2)
    with pytest.raises(ValueError, match="valid: quadra_k"):
        parse_op("sep_conv_3x3")
