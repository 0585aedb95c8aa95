import pytest
import torch
from torch import nn

from search_spaces.convert import quadratize
from search_spaces.memory import saved_activation_bytes
from search_spaces.quadratic import QuadDWConv2d, QuadLinear


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1)])
def test_quad_dwconv_formula_and_shape(k, stride):
    torch.manual_seed(0)
    conv = QuadDWConv2d(4, k, stride)
    x = torch.randn(2, 4, 9, 9)
    expected = conv.dwa(x) * conv.dwb(x) + conv.dwc(x)
    y = conv(x)
    assert y.shape == (2, 4, (9 - 1) // stride + 1, (9 - 1) // stride + 1)
    torch.testing.assert_close(y, expected)


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd"):
        QuadDWConv2d(4, 4)


@pytest.mark.parametrize("stride", [1, 2])
def test_memory_saving_matches_autograd_in_float64(stride):
    torch.manual_seed(0)
    plain = QuadDWConv2d(3, 5, stride).double()
    saving = QuadDWConv2d(3, 5, stride, memory_saving=True).double()
    saving.load_state_dict(plain.state_dict())
    x1 = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    g = torch.randn_like(plain(x1))
    plain(x1).backward(g)
    saving(x2).backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    for (n, p1), p2 in zip(plain.named_parameters(), saving.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-5, msg=n)
    assert torch.autograd.gradcheck(
        lambda x: saving(x), (torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True),))


def test_memory_saving_saves_only_the_input():
    plain, saving = QuadDWConv2d(8, 7), QuadDWConv2d(8, 7, memory_saving=True)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    b_plain = saved_activation_bytes(lambda: plain(x), plain)
    b_saving = saved_activation_bytes(lambda: saving(x), saving)
    assert b_saving == x.numel() * 4  # just the input
    assert b_plain >= 3 * x.numel() * 4  # input + both projections
    assert b_saving < b_plain


@pytest.mark.parametrize("neuron", ["lowrank", "t2", "t3", "t4"])
def test_quad_linear_types(neuron):
    layer = QuadLinear(5, 3, neuron)
    x = torch.randn(4, 5)
    y = layer(x)
    wa = layer.wa
    ref = {"t2": lambda: wa(x * x) + layer.wc(x), "t3": lambda: wa(x) ** 2 + layer.wc(x),
           "t4": lambda: wa(x) * layer.wb(x), "lowrank": lambda: wa(x) * layer.wb(x) + layer.wc(x)}[neuron]()
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_quad_linear_unknown_type():
    with pytest.raises(ValueError, match="valid: lowrank"):
        QuadLinear(2, 2, "t9")


def test_quadratize_preserves_outputs_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.BatchNorm2d(8),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.Flatten())
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    before = model(x)
    assert quadratize(model) == 2
    assert sum(isinstance(m, QuadDWConv2d) for m in model.modules()) == 2
    torch.testing.assert_close(model(x), before, atol=0, rtol=0)
    model.train()
    model(x).square().mean().backward()
    q = model[2]
    assert q.dwa.weight.grad.abs().sum() > 0  # the quadratic term learns from step 0
