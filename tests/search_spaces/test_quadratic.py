import json

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


def _pair(c, k, stride, memory_saving=False, dtype=torch.float32):
    torch.manual_seed(0)
    sep = QuadDWConv2d(c, k, stride, memory_saving=memory_saving, impl="separate").to(dtype)
    for p in sep.parameters():  # nonzero biases so every branch's bias matters
        nn.init.normal_(p, std=0.2)
    grp = QuadDWConv2d(c, k, stride, memory_saving=memory_saving, impl="grouped").to(dtype)
    grp.load_state_dict(sep.state_dict())  # same parameter names and shapes
    return sep, grp


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("memory_saving", [False, True])
@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1)])
def test_grouped_impl_matches_separate_outputs_and_gradients(k, stride, memory_saving, dtype, tol):
    """Equal within ``tol`` relative to each tensor's largest entry (float32 sums in another order)."""
    def close(a, b, msg=""):
        torch.testing.assert_close(a, b, rtol=0, atol=tol * b.abs().max().item(), msg=msg)

    sep, grp = _pair(6, k, stride, memory_saving, dtype)
    x1 = torch.randn(3, 6, 11, 11, dtype=dtype, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = sep(x1), grp(x2)
    close(y2, y1)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    close(x2.grad, x1.grad)
    for (n, p1), p2 in zip(sep.named_parameters(), grp.parameters()):
        assert p2.grad is not None, n
        close(p2.grad, p1.grad, msg=n)


def test_grouped_memory_saving_gradcheck_and_saves_only_the_input():
    _, grp = _pair(3, 5, 1, memory_saving=True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: grp(x), (torch.randn(1, 3, 6, 6, dtype=torch.float64,
                                                                  requires_grad=True),))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert saved_activation_bytes(lambda: grp(x), grp) == x.numel() * 8


def test_impl_state_dicts_interchange_and_default():
    sep, grp = _pair(4, 3, 1)
    assert sep.state_dict().keys() == grp.state_dict().keys()
    assert QuadDWConv2d(4, 3).impl == "auto"
    grp.impl = "separate"  # switchable on a built model: the parameters are the same
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(grp(x), sep(x))
    with pytest.raises(ValueError, match="impl"):
        QuadDWConv2d(4, 3, impl="fused")


def test_auto_takes_grouped_only_for_small_inputs_at_inference():
    small, big = torch.randn(1, 32, 14, 14), torch.randn(1, 64, 14, 14)  # 6272 and 12544 elements
    k3, k7 = QuadDWConv2d(32, 3), QuadDWConv2d(32, 7)
    with torch.no_grad():
        assert k3.uses_grouped(small) and not k7.uses_grouped(small)
        assert not QuadDWConv2d(64, 3).uses_grouped(big)
        assert not QuadDWConv2d(256, 3).uses_grouped(torch.randn(1, 256, 2, 2))  # many channels: slower grouped
    assert not k3.uses_grouped(small)  # the weights need gradients: training keeps the separate convs
    k3.requires_grad_(False)
    assert k3.uses_grouped(small) and not k3.uses_grouped(small.clone().requires_grad_())
    with torch.no_grad():
        torch.testing.assert_close(k3(small), k3.dwa(small) * k3.dwb(small) + k3.dwc(small), atol=1e-6, rtol=1e-5)


def test_auto_keeps_the_deployed_graph_under_tracing():
    conv = QuadDWConv2d(8, 3)
    x = torch.randn(1, 8, 6, 6)

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        assert conv.uses_grouped(x)
        with Mode():
            assert not conv.uses_grouped(x)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("k,hw,channels_last", [(3, (2, 2), False), (5, (3, 3), True), (7, (7, 7), True),
                                                (7, (4, 6), False), (3, (1, 1), True)])
def test_dense_impl_matches_separate_outputs_and_gradients(k, hw, channels_last, dtype, tol):
    """The dense matmul (the default in CPU training of small maps) against the three-conv reference."""
    def close(a, b, msg=""):
        torch.testing.assert_close(a, b, rtol=0, atol=tol * b.abs().max().item(), msg=msg)

    sep, _ = _pair(6, k, 1, dtype=dtype)
    dense = QuadDWConv2d(6, k, impl="dense").to(dtype)
    dense.load_state_dict(sep.state_dict())
    x1 = torch.randn(5, 6, *hw, dtype=dtype)
    if channels_last:  # what the block's LayerNorm hands the mixer
        x1 = x1.contiguous(memory_format=torch.channels_last)
    x1.requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = sep(x1), dense(x2)
    assert y2.shape == y1.shape
    close(y2, y1)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    close(x2.grad, x1.grad)
    for (n, p1), p2 in zip(sep.named_parameters(), dense.parameters()):
        close(p2.grad, p1.grad, msg=n)


def test_auto_takes_dense_in_training_where_it_timed_faster_and_times_each_shape_once(monkeypatch, tmp_path):
    import search_spaces.quadratic as q
    monkeypatch.setenv("QUADRANAS_CACHE", str(tmp_path))
    timed = []
    faster = {3: False, 5: True, 7: True}  # a machine where dense wins for k5 and k7 only

    def fake(shape, k, dtype=torch.float32):
        timed.append((shape, k))
        return faster[k]

    monkeypatch.setattr(q, "dense_is_faster", fake)

    def impl(k, hw, grad=True, c=8):
        conv = QuadDWConv2d(c, k)
        x = torch.randn(2, c, *hw)
        with torch.set_grad_enabled(grad):
            return conv.impl_for(x)

    assert impl(7, (7, 7)) == impl(5, (3, 3)) == "dense" and impl(3, (3, 3)) == "separate"
    assert impl(7, (7, 7)) == "dense" and len(timed) == 3  # each (shape, kernel) timed once
    assert impl(7, (14, 14)) == "separate" and len(timed) == 3  # above DENSE_MAX_PIXELS: never timed
    assert impl(7, (7, 7), grad=False) != "dense"  # inference keeps the convs (auto_grouped decides)
    assert QuadDWConv2d(8, 5, stride=2).impl_for(torch.randn(2, 8, 3, 3)) == "separate"  # dense is stride 1
    assert QuadDWConv2d(8, 5, memory_saving=True).impl_for(torch.randn(2, 8, 3, 3)) == "separate"
    assert len(timed) == 3
    saved = json.loads(q._timings_path().read_text())  # cached on disk, like the latency tables
    t = torch.get_num_threads()
    assert saved == {f"2x8x7x7-k7-float32-t{t}": True, f"2x8x3x3-k5-float32-t{t}": True,
                     f"2x8x3x3-k3-float32-t{t}": False}
    q._TIMED.clear()  # a new process reads the file: nothing is timed again
    assert impl(5, (3, 3)) == "dense" and len(timed) == 3
    with pytest.raises(ValueError, match="stride 1"):
        QuadDWConv2d(8, 5, stride=2, impl="dense")(torch.randn(2, 8, 3, 3))


def test_the_timing_itself_runs_both_paths_and_leaves_the_random_streams_alone():
    from search_spaces.quadratic import dense_is_faster
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert dense_is_faster((4, 8, 3, 3), 3) in (True, False)
    assert torch.equal(torch.rand(3), expected)


def test_dense_taps_built_under_inference_mode_still_train():
    conv = QuadDWConv2d(4, 5, impl="dense")
    with torch.inference_mode():
        conv(torch.randn(1, 4, 3, 2))  # first use of the (3, 2, 5) taps, cached
    conv(torch.randn(2, 4, 3, 2)).sum().backward()
    assert conv.dwa.weight.grad is not None
