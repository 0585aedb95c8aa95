import pytest
import torch

from search_spaces.quadranet import MODELS, quadranet, quadranet_arch
from search_spaces.summary import count_macs, count_params, main

# DESIGN.md table (QuadraNet paper): params (M), GMACs at 224x224, 1000 classes.
PAPER = {"quadranet25_t": (16.2, 2.9), "quadranet36_t": (23.6, 4.1), "quadranet36_b": (90.4, 15.8)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_within_3_percent_of_paper(name):
    net = quadranet(name)
    params_m = count_params(net) / 1e6
    gmacs = count_macs(net, (1, 3, 224, 224)) / 1e9
    ref_p, ref_g = PAPER[name]
    assert abs(params_m / ref_p - 1) < 0.03, params_m
    assert abs(gmacs / ref_g - 1) < 0.03, gmacs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_forwards_and_backwards(name):
    torch.manual_seed(0)
    net = quadranet(name, drop_path_rate=0.1, input_shape=(3, 32, 32), num_classes=10, stem_stride=2)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    out = net(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("hw,stem", [(28, 2), (32, 2), (224, 4)])
def test_shapes(hw, stem):
    net = quadranet("quadranet36_xxs", input_shape=(1 if hw == 28 else 3, hw, hw), num_classes=7, stem_stride=stem)
    x = torch.randn(1, 1 if hw == 28 else 3, hw, hw, requires_grad=True)
    y = net(x)
    assert y.shape == (1, 7)
    y.sum().backward()
    assert x.grad is not None


def test_unknown_model():
    with pytest.raises(ValueError, match="valid: quadranet25_xxs"):
        quadranet_arch("quadranet99")


def test_summary_cli(capsys):
    assert main(["quadranet25_xxs"]) == 0
    out = capsys.readouterr().out
    assert "stage3" in out and "params" in out and "GMACs" in out
    assert main(["nope"]) == 2
