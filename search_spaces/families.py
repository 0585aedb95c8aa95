"""Block families: everything the network skeleton does differently per family, in one entry each.

A family names the op kinds its searchable layers may use (the op grammar), where a stage changes
width or stride (in a transition between stages, or in the first layer of the stage), and how the
stem, the transitions, the head and the weight init are built. :mod:`search_spaces.arch`, the
supernet and the reports read only :data:`FAMILIES`; a new family is one more entry here.

* ``quadra`` (QuadraNet, ConvNeXt-style): patchify stem + LayerNorm, LayerNorm + strided conv
  between stages, head pool -> LayerNorm -> Linear; every layer keeps its shape; trunc-normal init.
* ``proxyless`` (ProxylessNAS / MobileNetV2): conv3x3-BN-ReLU6 stem, the first layer of a stage
  changes width and stride, head conv1x1-BN-ReLU6 -> pool -> Linear; torch's default init.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from search_spaces.blocks import LayerNorm2d, init_weights

if TYPE_CHECKING:  # arch.py imports this module
    from search_spaces.arch import Macro, Stage


@dataclass(frozen=True)
class Family:
    name: str
    op_kinds: tuple[str, ...]  # block kinds of the op grammar "<kind>_k<odd>_e<int>" (identity/zero: any family)
    first_layer_reshapes: bool  # True: a stage's first layer changes width/stride; False: its transition does
    stem: Callable[[Macro], tuple[nn.Module, int]]  # the stem and its output width
    transition: Callable[[int, Stage], nn.Module]  # from the previous stage's width into this stage
    head: Callable[[Macro, int], nn.Module]  # from the last stage's width to logits
    init: Callable[[nn.Module], None]  # applied to a whole network or supernet after it is built
    deploy_stem_stride: int | None  # stem stride at the 224-pixel deployment shape of a small-input arch
    #                                 (None: keep the arch's own)


# -- quadra --------------------------------------------------------------------------------
def _quadra_stem(m: Macro) -> tuple[nn.Module, int]:
    w0, s = m.stages[0].width, m.stem_stride
    k, pad = (s, 0) if s > 1 else (3, 1)
    return nn.Sequential(nn.Conv2d(m.input_shape[0], w0, k, s, pad), LayerNorm2d(w0)), w0


def _quadra_transition(prev: int, st: Stage) -> nn.Module:
    if prev == st.width and st.stride == 1:
        return nn.Identity()
    return nn.Sequential(LayerNorm2d(prev), nn.Conv2d(prev, st.width, st.stride, st.stride))


def _quadra_head(m: Macro, prev: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(prev, eps=1e-6),
                         nn.Linear(prev, m.num_classes))


# -- proxyless -----------------------------------------------------------------------------
def _proxyless_stem(m: Macro) -> tuple[nn.Module, int]:
    w0 = m.stem_width
    return nn.Sequential(nn.Conv2d(m.input_shape[0], w0, 3, m.stem_stride, 1, bias=False), nn.BatchNorm2d(w0),
                         nn.ReLU6(inplace=True)), w0


def _no_transition(prev: int, st: Stage) -> nn.Module:
    return nn.Identity()


def _proxyless_head(m: Macro, prev: int) -> nn.Module:
    hw = m.head_width or prev
    return nn.Sequential(nn.Conv2d(prev, hw, 1, bias=False), nn.BatchNorm2d(hw), nn.ReLU6(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hw, m.num_classes))


def _torch_default_init(module: nn.Module) -> None:
    """ProxylessNAS nets keep the initialisation torch gives each layer."""


FAMILIES: dict[str, Family] = {
    "quadra": Family("quadra", ("quadra", "convnext"), False, _quadra_stem, _quadra_transition, _quadra_head,
                     init_weights, deploy_stem_stride=4),
    "proxyless": Family("proxyless", ("mbconv",), True, _proxyless_stem, _no_transition, _proxyless_head,
                        _torch_default_init, deploy_stem_stride=None),
}


def get_family(name: str) -> Family:
    """The registry entry; an unknown name is a ValueError naming the valid ones."""
    if name not in FAMILIES:
        raise ValueError(f"macro.family: unknown {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]
