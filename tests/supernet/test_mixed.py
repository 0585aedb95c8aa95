import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.spaces import quadra_space
from supernet.mixed import MixedOp, Sample
from supernet.supernet import Supernet


def _layer(seed=0):
    torch.manual_seed(seed)
    ops = [nn.Conv2d(3, 3, k, padding=k // 2).double() for k in (1, 3, 5)] + [nn.Identity()]
    m = MixedOp(ops, ["c1", "c3", "c5", "identity"]).double()
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64))
    return m


def _loss(y):
    return (y.tanh() * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).cos()).sum()


def _brute_force_alpha_grad(m, x, involved):
    """dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i), dL/dg_j by finite differences on the gate."""
    outs = [m.candidates[k](x).detach() for k in range(len(m.candidates))]
    active = m.sample.active
    eps = 1e-6
    dl_dg = torch.zeros(len(outs), dtype=torch.float64)
    for j in involved:
        g_plus = outs[active] + eps * outs[j]
        g_minus = outs[active] - eps * outs[j]
        dl_dg[j] = (_loss(g_plus) - _loss(g_minus)) / (2 * eps)
    q = F.softmax(m.alpha.detach()[list(involved)], 0)
    grad = torch.zeros_like(dl_dg)
    for a, i in enumerate(involved):
        for b, j in enumerate(involved):
            grad[i] += dl_dg[j] * q[b] * (float(a == b) - q[a])
    return grad


@pytest.mark.parametrize("mode", ["two", "full_v2", "full"])
def test_arch_gradient_matches_brute_force(mode):
    for seed in range(4):
        m = _layer()
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        g = torch.Generator().manual_seed(seed)
        s = m.resample("arch", mode, g)
        y = m(x)
        torch.testing.assert_close(y, m.candidates[s.active](x))  # value = the active path alone
        (grad,) = torch.autograd.grad(_loss(y), m.alpha)
        expected = _brute_force_alpha_grad(m, x, s.involved)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
        if mode == "two":
            assert len(s.involved) == 2 and grad[[k for k in range(4) if k not in s.involved]].eq(0).all()


def test_arch_step_input_gradient_equals_active_path():
    m = _layer()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    s = m.resample("arch", "two", torch.Generator().manual_seed(1))
    (gx,) = torch.autograd.grad(_loss(m(x)), x)
    (gx_ref,) = torch.autograd.grad(_loss(m.candidates[s.active](x)), x)
    torch.testing.assert_close(gx, gx_ref)


def test_two_mode_rescale_keeps_unsampled_probabilities():
    m = _layer()
    s = m.resample("arch", "two", torch.Generator().manual_seed(0))
    p_before = m.probs().detach().clone()
    with torch.no_grad():
        m.alpha[list(s.involved)] += torch.tensor([0.7, -0.4], dtype=torch.float64)
    m.rescale()
    p_after = m.probs().detach()
    others = [k for k in range(4) if k not in s.involved]
    torch.testing.assert_close(p_after[others], p_before[others])
    assert not torch.allclose(p_after[list(s.involved)], p_before[list(s.involved)])


def test_weight_step_samples_from_p_and_gives_no_alpha_grad():
    m = _layer()
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([5.0, -5.0, -5.0, -5.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    counts = [m.resample("weight", "two", g).active for _ in range(200)]
    assert counts.count(0) > 180
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    m.pin(1)
    _loss(m(x)).backward()
    assert m.alpha.grad is None and m.candidates[1].weight.grad is not None and m.candidates[2].weight.grad is None


def test_errors():
    m = _layer()
    with pytest.raises(RuntimeError, match="resample"):
        m(torch.zeros(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="valid: two, full_v2, full"):
        m.resample("arch", "darts")
    assert isinstance(m.resample("weight", "two"), Sample)


def _tiny_space():
    return quadra_space(widths=(8, 16), depths=(2, 2), input_shape=(1, 16, 16), num_classes=3, stem_stride=2)


def test_supernet_parameters_are_kept_apart():
    net = Supernet(_tiny_space())
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert len(arch) == 4 and not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}


def test_supernet_arch_step_touches_only_logits():
    torch.manual_seed(0)
    net = Supernet(_tiny_space())
    net.resample("arch", "two", torch.Generator().manual_seed(0))
    x = torch.randn(4, 1, 16, 16)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 0]))
    grads = torch.autograd.grad(loss, net.arch_parameters())
    assert all(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in net.weight_parameters())


def test_expected_latency_is_differentiable_and_exact():
    net = Supernet(_tiny_space())
    lut = [torch.arange(len(m.names), dtype=torch.float32) + i for i, m in enumerate(net.mixed_ops())]
    e = net.expected_latency_ms(lut, fixed_ms=2.0)
    manual = 2.0 + sum((m.probs() * t).sum() for m, t in zip(net.mixed_ops(), lut))
    torch.testing.assert_close(e, manual)
    e.backward()
    assert all(a.grad is not None for a in net.arch_parameters())


def test_export_is_argmax():
    net = Supernet(_tiny_space())
    with torch.no_grad():
        for m, k in zip(net.mixed_ops(), itertools.cycle([0, 6, 3])):
            m.alpha.zero_()
            m.alpha[k] = 1.0
    arch = net.export()
    assert arch.choices == tuple(m.names[k] for m, k in zip(net.mixed_ops(), itertools.cycle([0, 6, 3])))


def test_uniform_weight_sampling_ignores_alpha():
    m = _layer()
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([5.0, -5.0, -5.0, -5.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    counts = [m.resample("weight", "two", g, sampling="uniform").active for _ in range(400)]
    assert all(60 < counts.count(i) < 140 for i in range(4))
    with pytest.raises(ValueError, match="valid: proxyless, uniform"):
        m.resample("weight", "two", g, sampling="fair")
