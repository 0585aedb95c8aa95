"""The shared search steps on real (small) data: digits."""

import pytest
import torch
from sklearn.datasets import load_digits

from nas.steps import arch_step, export_ms, lut_tensors, weight_step
from search_spaces.spaces import quadra_space
from supernet.loss import BudgetLoss
from supernet.supernet import Supernet


def _setup():
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images[:64], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target[:64])
    space = quadra_space(widths=(8, 16), depths=(2, 2), input_shape=(1, 8, 8), num_classes=10, stem_stride=2)
    model = Supernet(space, layer_scale_init=0.1)
    ops = [m.names for m in model.mixed_ops()]
    layer_ms = [[0.0 if n == "identity" else 1.0 + 0.1 * i for i, n in enumerate(names)] for names in ops]
    return model, x, y, ops, layer_ms


def test_lut_tensors_check_the_candidates():
    model, _, _, ops, layer_ms = _setup()
    lut = lut_tensors(ops, layer_ms, model)
    assert all(t.tolist() == pytest.approx(r) for t, r in zip(lut, layer_ms))
    with pytest.raises(RuntimeError, match="do not match"):
        lut_tensors([tuple(reversed(o)) for o in ops], layer_ms, model)


def test_weight_step_trains_weights_only_and_lowers_the_loss():
    model, x, y, _, _ = _setup()
    opt = torch.optim.AdamW(model.weight_parameters(), lr=3e-3)
    model.pin(["quadra_k3_e2"] * len(model.mixed_ops()))
    alpha = [a.detach().clone() for a in model.arch_parameters()]
    first, _ = weight_step(model, opt, x, y, grad_clip=5.0)
    for _ in range(30):
        loss, logits = weight_step(model, opt, x, y, grad_clip=5.0)
    assert loss < 0.7 * first and logits.shape == (64, 10) and not logits.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(alpha, model.arch_parameters()))


def test_arch_step_moves_logits_only_and_latency_pushes_to_cheap_ops():
    model, x, y, ops, layer_ms = _setup()
    lut = lut_tensors(ops, layer_ms, model)
    opt = torch.optim.Adam(model.arch_parameters(), lr=0.05, betas=(0.0, 0.999))
    # a latency-only loss (huge multiplier): every step must make E[LAT] smaller
    loss_fn = BudgetLoss("constraint", {"vpu": 0.5}, weight_init=100.0)
    gen = torch.Generator().manual_seed(0)
    before = model.expected_latency_ms(lut, 0.0).item()
    for _ in range(20):
        model.resample("arch", "two", gen)
        arch_step(model, opt, loss_fn, x, y, {"vpu": (lut, 0.0)})
    assert model.expected_latency_ms(lut, 0.0).item() < before
    assert all(p.grad is None for p in model.weight_parameters())
    assert export_ms(model, lut, 0.0) == pytest.approx(
        sum(float(t[int(m.alpha.argmax())]) for m, t in zip(model.mixed_ops(), lut)))
