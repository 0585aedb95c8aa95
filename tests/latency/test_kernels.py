import torch
import torch.nn.functional as F
from torch import nn

from latency.kernels import Kernel, summarize, total_macs, trace_kernels


def _types(kernels: list[Kernel]) -> list[str]:
    return [k.type for k in kernels]


def test_macs_of_conv_linear_net_match_hand_count():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    ks = trace_kernels(net, (1, 3, 32, 32))
    assert _types(ks) == ["conv", "bn", "relu", "dwconv", "global_pool", "fc"]
    conv, _, _, dw, _, fc = ks
    assert conv.macs == 8 * 16 * 16 * 3 * 3 * 3
    assert dw.macs == 8 * 16 * 16 * 3 * 3
    assert fc.macs == 8 * 10
    assert total_macs(ks) == 8 * 16 * 16 * 27 + 8 * 16 * 16 * 9 + 80
    assert (conv.kernel_size, conv.stride, conv.groups) == (3, 2, 1)
    assert (dw.kernel_size, dw.stride, dw.groups) == (3, 1, 8)
    assert conv.params == 8 * 3 * 9 + 8 and fc.params == 8 * 10 + 10
    assert conv.input_shape == (1, 3, 32, 32) and conv.output_shape == (1, 8, 16, 16)
    # float32 bytes: input + weights + output
    assert conv.bytes == 4 * (3 * 32 * 32 + conv.params + 8 * 16 * 16)
    assert conv.name == "0" and fc.name == "6"


def test_macs_scale_with_batch():
    net = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    one = total_macs(trace_kernels(net, (1, 4, 8, 8)))
    assert total_macs(trace_kernels(net, (3, 4, 8, 8))) == 3 * one


class _Custom(nn.Module):
    """Functional ops mixed with hooked modules (no double counting expected)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc = nn.Linear(c, c)
        self.gamma = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x):
        y = x.permute(0, 2, 3, 1)
        y = F.layer_norm(y, y.shape[-1:])
        y = self.ln(y)
        y = self.fc(y).permute(0, 3, 1, 2)
        return x + self.gamma * (self.dw(y) * y)


def test_functional_ops_in_custom_module_without_double_counting():
    ks = trace_kernels(_Custom(), (1, 8, 6, 6))
    assert _types(ks) == ["transpose", "layernorm", "layernorm", "fc", "transpose", "dwconv", "mul", "mul",
                          "add"]
    fc = ks[3]
    assert fc.macs == 6 * 6 * 8 * 8 and fc.input_shape == (1, 6, 6, 8)
    gamma_mul = ks[7]
    assert gamma_mul.params == 8  # the layer-scale parameter is an operand, not an activation


class _QuadDW(nn.Module):
    def __init__(self, c: int, k: int = 5):
        super().__init__()
        self.dwa, self.dwb, self.dwc = (nn.Conv2d(c, c, k, padding=k // 2, groups=c) for _ in range(3))

    def forward(self, x):
        return self.dwa(x) * self.dwb(x) + self.dwc(x)


def test_quadratic_depthwise_conv_is_three_dwconvs_a_mul_and_an_add():
    ks = trace_kernels(_QuadDW(16), (1, 16, 10, 10))
    assert sorted(_types(ks)) == ["add", "dwconv", "dwconv", "dwconv", "mul"]
    assert summarize(ks)["dwconv"]["macs"] == 3 * 16 * 10 * 10 * 25
    mul = next(k for k in ks if k.type == "mul")
    assert mul.bytes == 4 * 3 * 16 * 10 * 10  # two inputs read, one output written


class _Views(nn.Module):
    def forward(self, x):
        y = x.view(x.shape[0], -1).reshape(x.shape).flatten(2)
        y = y.unsqueeze(1).squeeze(1).contiguous()
        z = x.mean((2, 3), keepdim=True).permute(0, 2, 3, 1)  # moves only size-1 dims: free
        return y, z


def test_views_are_free_and_spatial_mean_is_global_pool():
    ks = trace_kernels(_Views(), (2, 4, 5, 5))
    assert _types(ks) == ["global_pool"]


def test_functional_activation_pool_concat_and_shuffle():
    class M(nn.Module):
        def forward(self, x):
            a = F.hardswish(x)
            b = F.max_pool2d(x, 3, 1, 1)
            y = torch.cat([a, b], 1)
            return F.adaptive_avg_pool2d(F.gelu(nn.functional.channel_shuffle(y, 2)), 1)

    ks = trace_kernels(M(), (1, 4, 8, 8))
    assert _types(ks) == ["relu", "pool", "concat", "channel_shuffle", "gelu", "global_pool"]
    assert ks[0].op == "hardswish"
    assert ks[1].kernel_size == 3 and ks[1].stride == 1


def test_quadrablock_like_module_records_ln_gelu_mul_permute():
    class Block(nn.Module):
        def __init__(self, c: int = 16):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
            self.mixer = _QuadDW(c, 7)
            self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.ones(c, 1, 1))

        def forward(self, x):
            y = self.ln1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            x = x + self.gamma * self.mixer(y)
            y = self.fc2(self.act(self.fc1(self.ln2(x.permute(0, 2, 3, 1)))))
            return x + y.permute(0, 3, 1, 2)

    ks = trace_kernels(Block(), (1, 16, 14, 14))
    counts = {t: d["count"] for t, d in summarize(ks).items()}
    assert counts == {"transpose": 4, "layernorm": 2, "dwconv": 3, "mul": 2, "add": 3, "fc": 2, "gelu": 1}
    assert ks[-1].type == "add"


def test_training_mode_restored_and_no_hooks_left():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net.train()
    trace_kernels(net, (1, 3, 8, 8))
    assert net.training and net[1].training
    net.eval()
    trace_kernels(net, (1, 3, 8, 8))
    assert not net.training
    assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks


def test_running_stats_untouched():
    bn = nn.BatchNorm2d(3)
    bn.train()
    before = bn.running_mean.clone()
    trace_kernels(nn.Sequential(bn), (2, 3, 4, 4))
    assert torch.equal(bn.running_mean, before)
