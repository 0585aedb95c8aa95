"""The random baseline: architectures drawn inside a latency band."""

import numpy as np
import pytest

from search_spaces.sampling import EmptyBand, sample_in_band
from search_spaces.spaces import quadra_space


def _space_and_lut():
    space = quadra_space()
    rng = np.random.default_rng(0)
    # per layer: block ops cost 4-9 ms, identity 0 (the shape of the vpu table)
    lut = [np.where(np.array(c) == "identity", 0.0, rng.uniform(4.0, 9.0, len(c))) for c in space.all_candidates()]
    return space, lut


def _ms(space, lut, fixed, choices):
    return fixed + sum(r[c.index(x)] for r, c, x in zip(lut, space.all_candidates(), choices))


@pytest.mark.parametrize("lo,hi", [(27.0, 30.0), (9.0, 10.0), (54.0, 60.0)])
def test_every_draw_lies_in_the_band_and_draws_vary(lo, hi):
    space, lut = _space_and_lut()
    draws = sample_in_band(space.all_candidates(), lut, 2.0, lo, hi, 8, seed=1)
    assert len(draws) == 8 and len(set(draws)) == 8
    for d in draws:
        assert lo <= _ms(space, lut, 2.0, d) <= hi
    blocks = {tuple(i for i, c in enumerate(d) if c != "identity") for d in draws}
    assert len(blocks) > 4  # positions vary, not one corner of the band
    ops = {c for d in draws for c in d if c != "identity"}
    assert len(ops) >= 3


def test_deterministic_in_seed_and_a_prefix_for_fewer_draws():
    space, lut = _space_and_lut()
    a = sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 5, seed=3)
    assert a == sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 5, seed=3)
    assert a[:3] == sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 3, seed=3)
    assert a != sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 5, seed=4)


def test_learned_probabilities_steer_the_draws():
    space, lut = _space_and_lut()
    cands = space.all_candidates()
    # a distribution that wants quadra_k7_e4 in the first four layers, identity elsewhere
    probs = [[0.97 if (c == "quadra_k7_e4" if i < 4 else c == "identity") else 0.03 / (len(cs) - 1) for c in cs]
             for i, cs in enumerate(cands)]
    fixed = 2.0
    top = fixed + sum(r[c.index("quadra_k7_e4")] for r, c in zip(lut[:4], cands[:4]))
    draws = sample_in_band(cands, lut, fixed, 0.9 * top, top, 20, seed=0, layer_probs=probs, mix=1.0)
    hits = sum(d[:4] == ("quadra_k7_e4",) * 4 for d in draws)
    assert hits >= 1 and all(0.9 * top <= _ms(space, lut, fixed, d) <= top for d in draws)


def test_empty_band_is_a_clear_error():
    space, lut = _space_and_lut()
    with pytest.raises(EmptyBand, match="outside the space's range"):
        sample_in_band(space.all_candidates(), lut, 2.0, 0.5, 1.0, 3)
    with pytest.raises(EmptyBand, match="widen the band"):  # inside the range but (almost) never hit
        sample_in_band(space.all_candidates(), lut, 2.0, 2.0001, 2.0002, 3, max_draws=100_000)
    with pytest.raises(ValueError, match="not a band"):
        sample_in_band(space.all_candidates(), lut, 2.0, 30.0, 20.0, 3)


def test_a_band_with_few_members_gives_what_it_has_when_asked():
    cands = [("a", "identity"), ("a", "identity")]
    lut = [[5.0, 0.0], [6.0, 0.0]]  # in [5.5, 7.5] ms: exactly one block, in either layer
    got = sample_in_band(cands, lut, 1.0, 5.5, 7.5, 5, at_least=1, max_draws=50_000)
    assert sorted(got) == [("a", "identity"), ("identity", "a")]
    with pytest.raises(EmptyBand):
        sample_in_band(cands, lut, 1.0, 5.5, 7.5, 5, max_draws=50_000)


def test_budgets_on_several_devices_are_all_met_and_the_binding_one_used():
    space, lut = _space_and_lut()
    rng = np.random.default_rng(1)
    # a second device where the 7x7 kernels are dear: its budget binds for some draws, the first's for others
    other = [np.where(np.array(c) == "identity", 0.0, rng.uniform(2.0, 12.0, len(c))) for c in space.all_candidates()]
    draws = sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 64, seed=2, also=[(other, 1.0, 28.0)])
    assert len(set(draws)) == 64
    binding = set()
    for choices in draws:
        first, second = _ms(space, lut, 2.0, choices) / 30.0, _ms(space, other, 1.0, choices) / 28.0
        assert first <= 1.0 and second <= 1.0 and max(first, second) >= 0.9
        binding.add(first > second)
    assert binding == {True, False}  # both budgets bind somewhere: the band is the joint one, not the first's
    assert sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 5, seed=3, also=[]) == \
        sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 5, seed=3)
    with pytest.raises(EmptyBand):  # a budget no architecture meets
        sample_in_band(space.all_candidates(), lut, 2.0, 27.0, 30.0, 5, also=[(other, 1.0, 0.5)], max_draws=400_000)
