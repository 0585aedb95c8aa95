"""Fixed QuadraNet models (QuadraNet paper; kernel 7, expansion 4, widths C, 2C, 4C, 8C).

Registered by name; each is an :class:`Arch` of the ``quadra`` family, so the same
``build_net`` and JSON tools apply.
"""

from __future__ import annotations

from search_spaces.arch import Arch, Macro, Net, Stage, build_net

DEPTHS = {"25": (2, 3, 18, 2), "36": (3, 3, 27, 3)}
WIDTHS = {"xxs": 16, "xs": 32, "t": 64, "s": 96, "b": 128}
MODELS = {f"quadranet{d}_{w}": (d, w) for d in DEPTHS for w in WIDTHS}


def quadranet_arch(name: str, input_shape=(3, 224, 224), num_classes: int = 1000,
                   stem_stride: int = 4) -> Arch:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    d, w = MODELS[name]
    c = WIDTHS[w]
    stages = tuple(Stage(c * 2**i, depth, 1 if i == 0 else 2) for i, depth in enumerate(DEPTHS[d]))
    macro = Macro("quadra", tuple(input_shape), num_classes, stem_stride, stages)
    return Arch(name, macro, ("quadra_k7_e4",) * sum(DEPTHS[d]))


def quadranet(name: str, drop_path_rate: float = 0.0, memory_saving: bool = False, **macro_kw) -> Net:
    return build_net(quadranet_arch(name, **macro_kw), drop_path_rate, memory_saving)
