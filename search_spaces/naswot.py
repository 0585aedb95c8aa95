"""Training-free architecture score: NASWOT (Mellor et al., "Neural Architecture Search without
Training", ICML 2021).

A network at initialisation maps a mini-batch of ``N`` images to one binary code per image: which
units of its activation layers are on (pre-activation > 0). Two images whose codes agree on many
units are hard for the network to tell apart. The score is ``log |det K|`` of the ``N x N`` kernel
``K[i, j] = number of units on which codes i and j agree``, summed over the activation layers:
the more distinct the codes, the higher the score. Mellor et al. found it correlated with trained
accuracy on NAS-Bench-101/201 without training a single weight.

Here it ranks the architectures inside a latency band (``derive.method=naswot`` of ``nas.search``).
On Fashion-MNIST (3-epoch retrains on 60k) its Kendall tau with retrained top-1 was 0.68 / 0.64 / 0.66
in the vpu 30 / cpu 30 / gpu 1 ms bands over the architectures first retrained, and 0.49 / 0.35 / 0.48
once its own picks and new random draws were added: no better than counting parameters
(``python -m experiments.diagnostics.proxy_tau``, ``experiments/results/recipe_e3_60k``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from search_spaces.arch import Arch, build_net

ACTIVATIONS = (nn.GELU, nn.ReLU, nn.ReLU6)  # every activation module the spaces' blocks use


def naswot_score(net: nn.Module, images: torch.Tensor) -> float:
    """``log |det K|`` of the activation-code kernel of ``net`` on ``images`` (a batch of N >= 2)."""
    if len(images) < 2:
        raise ValueError(f"NASWOT needs a batch of at least 2 images, got {len(images)}")
    kernel = torch.zeros(len(images), len(images), dtype=torch.float64)

    def add_codes(_module, inputs):  # a pre-hook: in-place activations have not yet overwritten the input
        nonlocal kernel
        codes = (inputs[0].reshape(len(images), -1) > 0).double()
        kernel = kernel + codes @ codes.T + (1 - codes) @ (1 - codes).T

    hooks = [m.register_forward_pre_hook(add_codes) for m in net.modules() if isinstance(m, ACTIVATIONS)]
    if not hooks:
        raise ValueError(f"{type(net).__name__} has no activation layer ({', '.join(a.__name__ for a in ACTIVATIONS)})")
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(images)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return float(torch.slogdet(kernel).logabsdet)


def naswot_scores(archs: Sequence[Arch], images: torch.Tensor, seed: int = 0) -> list[float]:
    """:func:`naswot_score` of each architecture, built at initialisation with the same ``seed``."""
    scores = []
    for arch in archs:
        torch.manual_seed(seed)
        scores.append(naswot_score(build_net(arch), images))
    return scores
