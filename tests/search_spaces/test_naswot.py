"""NASWOT scores: the code kernel by hand on a tiny net, and real architectures on digits."""

import math

import pytest
import torch
from torch import nn

from nas.data import get_dataset
from search_spaces.naswot import naswot_score, naswot_scores
from search_spaces.spaces import get_space


def _tiny_net() -> nn.Sequential:
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    return nn.Sequential(lin, nn.ReLU(inplace=True))


def test_kernel_counts_agreeing_units_by_hand():
    # pre-activations (x0, x1, x0 + x1); codes: a -> 110, b -> 011 (-2 + 1 < 0), c -> 111
    images = torch.tensor([[1.0, 2.0], [-2.0, 1.0], [3.0, 1.0]])
    codes = torch.tensor([[1, 1, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.float64)
    agree = codes @ codes.T + (1 - codes) @ (1 - codes).T
    # a and c agree on every unit: K is singular and the score is -inf
    assert agree[0, 2] == 3 and math.isinf(naswot_score(_tiny_net(), images))
    images[2] = torch.tensor([1.0, -3.0])  # codes 100: all three differ
    codes[2] = torch.tensor([1, 0, 0])
    agree = codes @ codes.T + (1 - codes) @ (1 - codes).T
    assert naswot_score(_tiny_net(), images) == pytest.approx(torch.slogdet(agree).logabsdet.item())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2 images"):
        naswot_score(_tiny_net(), torch.ones(1, 2))
    with pytest.raises(ValueError, match="no activation layer"):
        naswot_score(nn.Linear(2, 3), torch.ones(4, 2))


def test_scores_of_real_architectures_are_seeded_and_separate_them():
    data, info = get_dataset("digits", "train", limit=64)
    images = torch.stack([data[i][0] for i in range(32)])
    space = get_space("quadra").with_input(tuple(info.input_shape), info.num_classes, 2)
    none = ["identity"] * 20
    archs = [space.arch(none[:i] + ["quadra_k3_e4"] + none[i + 1:]) for i in (0, 8, 19)]
    first = naswot_scores(archs, images, seed=0)
    assert first == naswot_scores(archs, images, seed=0)
    assert all(math.isfinite(s) for s in first) and len(set(first)) == 3
    net = torch.nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), 8), nn.ReLU())
    net.train()
    naswot_score(net, images)
    assert net.training  # the mode is restored
