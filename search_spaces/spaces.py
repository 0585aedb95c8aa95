"""Search spaces: a macro skeleton plus the candidate ops of each searchable layer.

Registered by name (``quadra``, ``proxyless``); ``conf/search_space/<name>.yaml`` holds the
same description as config, and :func:`space_from_config` builds a space from it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from search_spaces.arch import Arch, LayerSpec, Macro, Stage
from search_spaces.blocks import SKIP_OPS, parse_op

SMALL_INPUT_SIDE = 32  # inputs up to 32x32 get a stride-2 stem, larger ones stride 4 (as QuadraNet's)


def stem_stride_for(input_shape: tuple[int, ...]) -> int:
    """The stem stride a network gets at this input size (``model=``, re-shaped arch files and spaces alike)."""
    return 2 if max(input_shape[1:]) <= SMALL_INPUT_SIDE else 4


@dataclass(frozen=True)
class SearchSpace:
    name: str
    macro: Macro
    ops: tuple[str, ...]  # candidate ops; skip ops are offered only where the shape is kept

    def layers(self) -> list[LayerSpec]:
        return self.macro.searchable_layers()

    def candidates(self, layer: LayerSpec) -> tuple[str, ...]:
        return tuple(op for op in self.ops if op not in SKIP_OPS or layer.shape_kept)

    def all_candidates(self) -> list[tuple[str, ...]]:
        return [self.candidates(layer) for layer in self.layers()]

    def arch(self, choices, metadata: dict | None = None) -> Arch:
        return Arch(self.name, self.macro, tuple(choices), metadata or {})

    def random_arch(self, rng: random.Random | int | None = None) -> Arch:
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        return self.arch(rng.choice(c) for c in self.all_candidates())

    def smallest_arch(self) -> Arch:
        """Fewest multiply-adds: a skip op where allowed, else the smallest (e, k)."""
        return self.arch(min(c, key=_size_rank) for c in self.all_candidates())

    def smallest_block_arch(self) -> Arch:
        """Fewest multiply-adds without skip ops: a concrete net whose every layer maps its input to its
        output shape, e.g. to record the input shape of each layer (skip ops cannot stand in for the
        layers that change width or stride, as in the MBConv space)."""
        return self.arch(min((op for op in c if op not in SKIP_OPS), key=_size_rank) for c in self.all_candidates())

    def largest_arch(self) -> Arch:
        return self.arch(max(c, key=_size_rank) for c in self.all_candidates())

    def with_input(self, input_shape: tuple[int, int, int], num_classes: int,
                   stem_stride: int | None = None) -> SearchSpace:
        """The same space at another input size (e.g. a 28x28 training proxy).

        Without ``stem_stride``, a new input size gets the stride :func:`stem_stride_for` picks for it (a
        224-pixel stem of stride 4 would shrink 28x28 maps below the last stage's kernels).
        """
        same_size = tuple(input_shape[1:]) == tuple(self.macro.input_shape[1:])
        stride = stem_stride or (self.macro.stem_stride if same_size else stem_stride_for(input_shape))
        macro = replace(self.macro, input_shape=tuple(input_shape), num_classes=num_classes, stem_stride=stride)
        return replace(self, macro=macro)


def _size_rank(op: str) -> tuple[int, int]:
    """MACs grow with expansion e and kernel k; skip ops cost nothing."""
    _, k, e = parse_op(op)
    return (e, k)


def block_ops(kind: str, kernels=(3, 5, 7), expansions=(2, 4), skip: str | None = "identity") -> tuple[str, ...]:
    ops = tuple(f"{kind}_k{k}_e{e}" for e in expansions for k in kernels)
    return ops + ((skip,) if skip else ())


def quadra_space(widths=(32, 64, 128, 256), depths=(4, 4, 8, 4), kernels=(3, 5, 7), expansions=(2, 4),
                 input_shape=(3, 224, 224), num_classes=1000, stem_stride=4) -> SearchSpace:
    """Mobile-scale QuadraBlock space: 20 searchable layers over 4 stages (56/28/14/7 at 224)."""
    stages = tuple(Stage(w, d, 1 if i == 0 else 2) for i, (w, d) in enumerate(zip(widths, depths)))
    macro = Macro("quadra", tuple(input_shape), num_classes, stem_stride, stages)
    return SearchSpace("quadra", macro, block_ops("quadra", kernels, expansions, "identity"))


def proxyless_space(widths=(24, 40, 80, 96, 192, 320), depths=(4, 4, 4, 4, 4, 1), strides=(2, 2, 2, 1, 2, 1),
                    kernels=(3, 5, 7), expansions=(3, 6), input_shape=(3, 224, 224), num_classes=1000,
                    stem_stride=2, stem_width=32, first_width=16, head_width=1280) -> SearchSpace:
    """The original ProxylessNAS mobile space (MBConv k x e, plus zero where shapes match)."""
    stages = (Stage(first_width, 1, 1, "mbconv_k3_e1"),) + tuple(
        Stage(w, d, s) for w, d, s in zip(widths, depths, strides))
    macro = Macro("proxyless", tuple(input_shape), num_classes, stem_stride, stages, stem_width, head_width)
    return SearchSpace("proxyless", macro, block_ops("mbconv", kernels, expansions, "zero"))


SPACES: dict[str, Callable[..., SearchSpace]] = {"quadra": quadra_space, "proxyless": proxyless_space}


def get_space(name: str, **kwargs) -> SearchSpace:
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name](**kwargs)


TRAIN_ONLY_KEYS = ("train_stem_stride",)  # search-time options kept in the same config file


def space_from_config(cfg) -> SearchSpace:
    """Build from a mapping like ``conf/search_space/quadra.yaml`` (``name`` + builder arguments;
    training-only keys such as ``train_stem_stride`` are ignored)."""
    kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, str)
                  else v) for k, v in dict(cfg).items() if k != "name" and k not in TRAIN_ONLY_KEYS}
    return get_space(cfg["name"], **kwargs)


def space_of(arch: Arch) -> SearchSpace | None:
    """The search space ``arch`` came from: its search config (``metadata.config.search_space``) if it has
    one, else the registered space of that name; None if neither matches the architecture."""
    cfg = (arch.metadata.get("config") or {}).get("search_space")
    try:
        if cfg:
            space = space_from_config(cfg)
        elif arch.space in SPACES:
            space = get_space(arch.space)
        else:
            return None
    except (TypeError, ValueError):
        return None
    m, s = arch.macro, space.macro
    same = (m.family, m.stages, m.stem_width, m.head_width) == (s.family, s.stages, s.stem_width, s.head_width)
    return space if same and len(space.layers()) == len(arch.choices) else None


def in_space(arch: Arch, space: SearchSpace) -> bool:
    """Every choice of ``arch`` is a candidate of ``space`` (so its lookup tables price it layer by layer).
    An op the family builds but the space does not offer (``quadra_k9_e8``) is a valid network outside it."""
    return all(c in cands for c, cands in zip(arch.choices, space.all_candidates(), strict=True))

