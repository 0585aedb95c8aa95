"""The family registry: one entry decides the op grammar, stem, transitions, head and init."""

import dataclasses

import pytest
import torch
from torch import nn

from search_spaces import families
from search_spaces.arch import Arch, ArchError, Macro, Stage, build_net
from search_spaces.families import FAMILIES, get_family
from search_spaces.spaces import SPACES, get_space


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_builds_from_its_family_entry(name):
    space = get_space(name, input_shape=(1, 28, 28), num_classes=10, stem_stride=2)
    fam = get_family(space.macro.family)
    arch = space.random_arch(0)
    net = build_net(arch)
    stem, width = fam.stem(space.macro)
    assert type(net.stem) is type(stem) and [type(m) for m in net.stem] == [type(m) for m in stem]
    assert width == (space.macro.stem_width or space.macro.stages[0].width)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert all(sp.shape_kept for sp in space.macro.layers()) != fam.first_layer_reshapes


def test_a_new_family_is_one_registry_entry(monkeypatch):
    """A 'plain' family: ConvNeXt blocks only, quadra's skeleton, but a conv-only head and zero-init biases."""
    def head(m: Macro, prev: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(prev, m.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def init(module: nn.Module) -> None:
        for mod in module.modules():
            if isinstance(mod, nn.Conv2d) and mod.bias is not None:
                nn.init.constant_(mod.bias, 0.5)

    plain = dataclasses.replace(FAMILIES["quadra"], name="plain", op_kinds=("convnext",), head=head, init=init)
    monkeypatch.setitem(families.FAMILIES, "plain", plain)
    macro = Macro("plain", (1, 16, 16), 5, 2, (Stage(8, 2), Stage(16, 1, 2)))
    arch = Arch("custom", macro, ("convnext_k3_e2", "identity", "convnext_k5_e4"))
    net = build_net(arch)
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 5)
    assert isinstance(net.head[0], nn.Conv2d) and float(net.head[0].bias[0]) == 0.5
    with pytest.raises(ArchError, match="not valid in family 'plain'; valid: convnext_k<odd>_e<int>"):
        Arch("custom", macro, ("quadra_k3_e2", "identity", "convnext_k5_e4"))


def test_unknown_family_names_the_valid_ones():
    with pytest.raises(ArchError, match="unknown 'mystery'; valid: quadra, proxyless"):
        Arch("custom", Macro("mystery", (1, 16, 16), 5, 2, (Stage(8, 1),)), ("identity",))
