import pytest
import torch

from search_spaces.baseline_blocks import HorBlock, SwinBlock
from search_spaces.baseline_models import BASELINES, PAPER_SIZE, baseline_model
from search_spaces.summary import count_macs, count_params, main


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_params_and_macs_within_3_percent_of_own_paper(name):
    assert set(PAPER_SIZE) == set(BASELINES)
    net = baseline_model(name)
    params_m = count_params(net) / 1e6
    gmacs = count_macs(net, (1, 3, 224, 224)) / 1e9
    ref_p, ref_g = PAPER_SIZE[name]
    assert abs(params_m / ref_p - 1) < 0.03, params_m
    assert abs(gmacs / ref_g - 1) < 0.03, gmacs


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_forward_backward_small_input(name):
    torch.manual_seed(0)
    net = baseline_model(name, drop_path_rate=0.1, input_shape=(3, 32, 32), num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_configurations_follow_the_papers():
    hor = baseline_model("hornet_t")
    assert [{type(b.mixer).__name__} for b in hor.layers()][0] == {"GnConv"}
    assert [len(s[0].mixer.dims) for s in hor.stages] == [2, 3, 4, 5]  # gnConv orders per stage
    assert all(isinstance(b, HorBlock) and b.mixer.dwconv.kernel_size == (7, 7) for b in hor.layers())
    swin = baseline_model("swin_t")
    blocks = [s for s in swin.stages]
    assert [len(s) for s in blocks] == [2, 2, 6, 2] and [s[0].attn.heads for s in blocks] == [3, 6, 12, 24]
    assert all(isinstance(b, SwinBlock) and b.shift == (j % 2 == 1) for s in blocks for j, b in enumerate(s))
    convnext = baseline_model("convnext_t")
    assert [len(s) for s in convnext.stages] == [3, 3, 9, 3] and convnext.stages[3][0].fc1.in_features == 768


def test_summary_cli_and_errors(capsys):
    assert main(["convnext_t"]) == 0
    out = capsys.readouterr().out
    assert "convnext_t: 28.59M params" in out and "its paper: 28.6M" in out and "stage3" in out
    assert main(["resnet50"]) == 2
    assert "swin_t" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid: convnext_t"):
        baseline_model("vit_b")
