import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from search_spaces.arch import build_net
from search_spaces.spaces import get_space, space_from_config
from search_spaces.summary import count_macs

CONF = Path(__file__).resolve().parents[2] / "conf" / "search_space"


def test_quadra_space_layout():
    space = get_space("quadra")
    layers = space.layers()
    assert 18 <= len(layers) <= 24
    cands = space.all_candidates()
    assert all(len(c) == 7 and "identity" in c for c in cands)
    assert {op for c in cands for op in c} == {f"quadra_k{k}_e{e}" for k in (3, 5, 7) for e in (2, 4)} | {"identity"}


def test_quadra_min_max_macs_ratio_at_least_5x():
    space = get_space("quadra")
    small = count_macs(build_net(space.smallest_arch()), (1, 3, 224, 224))
    large = count_macs(build_net(space.largest_arch()), (1, 3, 224, 224))
    assert large / small >= 5
    for seed in range(3):
        m = count_macs(build_net(space.random_arch(seed)), (1, 3, 224, 224))
        assert small <= m <= large


def test_proxyless_space_matches_the_paper_backbone():
    space = get_space("proxyless")
    assert len(space.layers()) == 21
    first_of_stage = [lay for lay in space.layers() if not lay.shape_kept]
    assert all("zero" not in space.candidates(lay) for lay in first_of_stage)
    assert len(space.candidates(space.layers()[1])) == 7
    assert [s.width for s in space.macro.stages] == [16, 24, 40, 80, 96, 192, 320]


def test_random_arch_is_seeded():
    space = get_space("quadra")
    assert space.random_arch(3) == space.random_arch(random.Random(3))
    assert space.random_arch(3) != space.random_arch(4)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_build_the_registered_space(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert space_from_config(cfg) == get_space(path.stem)


def test_unknown_space():
    with pytest.raises(ValueError, match="valid: quadra, proxyless"):
        get_space("darts")
