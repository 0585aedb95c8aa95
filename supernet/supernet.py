"""The supernet of a search space: one :class:`MixedOp` per searchable layer.

Architecture parameters (the logits ``alpha``) are kept apart from the weights:
``arch_parameters()`` and ``weight_parameters()`` never overlap, so each gets its own
optimizer. Latency enters as plain tensors (one row of candidate latencies in ms per layer
plus the fixed part); this package never calls a latency backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from search_spaces.arch import Arch, LayerSpec, Net
from search_spaces.blocks import LAYER_SCALE_INIT, make_op
from search_spaces.families import get_family
from search_spaces.spaces import SearchSpace
from supernet.mixed import SAMPLINGS, MixedOp, host_ints, prefetch_host

# how weight steps draw their path: per layer (SAMPLINGS, see supernet.mixed) or, ``band``, one whole
# architecture from a pool the caller drew inside the latency band (see Supernet.pin_one_of)
WEIGHT_SAMPLINGS = (*SAMPLINGS, "band", "ladder", "sandwich")


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace, drop_path_rate: float = 0.0, memory_saving: bool = False,
                 layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__()
        self.space = space
        candidates = {spec.index: space.candidates(spec) for spec in space.layers()}

        def layer_fn(spec: LayerSpec, dp: float) -> nn.Module:
            if spec.fixed_op is not None:
                return make_op(spec.fixed_op, spec.in_ch, spec.out_ch, spec.stride, dp)
            names = candidates[spec.index]
            ops = [make_op(n, spec.in_ch, spec.out_ch, spec.stride, dp, memory_saving, layer_scale_init) for n in names]
            return MixedOp(ops, list(names))

        self.net = Net(space.macro, layer_fn, drop_path_rate)
        get_family(space.macro.family).init(self.net)
        for m in self.mixed_ops():  # the family's init leaves the logits alone, but be explicit
            nn.init.normal_(m.alpha, 0.0, 1e-3)

    def mixed_ops(self) -> list[MixedOp]:
        return [m for m in self.net.searchable_layers()]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.mixed_ops()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- sampling -----------------------------------------------------------------------
    def resample(self, kind: str, mode: str = "two", generator: torch.Generator | None = None,
                 sampling: str = "proxyless") -> None:
        if not (kind == "weight" and sampling == "uniform"):
            prefetch_host(self.mixed_ops())  # every layer's probabilities in one host read
        for m in self.mixed_ops():
            m.resample(kind, mode, generator, sampling)

    def rescale(self) -> None:
        for m in self.mixed_ops():
            m.rescale()

    def pin(self, choices: Sequence[str]) -> None:
        for m, name in zip(self.mixed_ops(), choices, strict=True):
            m.pin(m.names.index(name))

    def pin_one_of(self, pool: Sequence[Sequence[str]], generator: torch.Generator | None = None) -> int:
        """A weight step's path drawn uniformly from ``pool`` (whole architectures); returns its index.

        With a pool drawn inside the latency band (``train.sampling=band``) the shared weights train
        the networks the derivation will later compare, not the deep ones uniform per-layer draws
        give (7 candidates with one identity: ~17 of 20 layers are blocks, while a 30 ms vpu
        budget holds ~5)."""
        if not pool:
            raise ValueError("pin_one_of needs a non-empty pool of architectures")
        i = host_ints(torch.randint(len(pool), (1,), generator=generator))[0]
        self.pin(pool[i])
        return i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- architecture distribution --------------------------------------------------------
    def probs(self) -> list[torch.Tensor]:
        return [m.probs() for m in self.mixed_ops()]

    def entropy(self) -> torch.Tensor:
        """Mean entropy per layer, in nats."""
        return torch.stack([-(p * p.clamp_min(1e-12).log()).sum() for p in self.probs()]).mean()

    def expected_latency_ms(self, layer_ms: Sequence[torch.Tensor], fixed_ms: float) -> torch.Tensor:
        """E[LAT] = fixed + sum_l sum_i p_li LUT[l, i]; differentiable in the logits."""
        terms = [(p * t.to(p)).sum() for p, t in zip(self.probs(), layer_ms, strict=True)]
        return fixed_ms + torch.stack(terms).sum()

    def export(self, metadata: dict | None = None) -> Arch:
        """The argmax architecture (see :mod:`supernet.derive` for the budgeted one)."""
        return self.space.arch([m.export() for m in self.mixed_ops()], metadata)

    def arch_state(self) -> dict:
        return {"alpha": [a.detach().clone() for a in self.arch_parameters()]}
