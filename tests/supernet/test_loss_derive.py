import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from supernet.derive import InfeasibleTarget, derive, latency_range_ms
from supernet.loss import LatencyLoss


def test_mul_log_matches_official_formula_and_is_guarded():
    ce = torch.tensor(2.0)
    loss = LatencyLoss("mul_log", 30.0)
    e = torch.tensor(45.0, requires_grad=True)
    expected = 0.2 * 2.0 * (math.log(45e3) / math.log(30e3)) ** 0.3
    assert loss(ce, e).item() == pytest.approx(expected)
    # sub-millisecond latencies (GPU) stay finite, unlike logs taken in ms
    gpu = LatencyLoss("mul_log", 2.0)
    for v in (0.5, 1.0, 1e-9):
        val = gpu(ce, torch.tensor(v, requires_grad=True))
        assert torch.isfinite(val)
    with pytest.raises(ValueError, match="above 1 us"):
        LatencyLoss("mul_log", 1e-4)


def test_add_linear():
    loss = LatencyLoss("add_linear", 20.0)
    assert loss(torch.tensor(1.0), torch.tensor(30.0)).item() == pytest.approx(1.0 + 0.1 * 0.5)


def test_constraint_multiplier_grows_only_while_the_export_is_over_target():
    loss = LatencyLoss("constraint", 10.0, weight_init=0.0, eta=0.5)
    assert loss(torch.tensor(1.0), torch.tensor(12.0)).item() == 1.0  # w = 0: no latency pressure yet
    loss.update(12.0)  # the exported architecture is 20% over: w grows
    assert loss.weight.item() == pytest.approx(0.1)
    e = torch.tensor(12.0, requires_grad=True)
    loss(torch.tensor(1.0), e).backward()
    assert e.grad.item() == pytest.approx(0.1 / 10.0)  # pushes E[LAT] down
    loss.update(12.0)
    assert loss.weight.item() == pytest.approx(0.2)
    for _ in range(10):
        loss.update(5.0)  # fits: the pressure fades, never below zero
    assert loss.weight.item() == 0.0
    big = LatencyLoss("constraint", 10.0, weight_init=0.0, eta=100.0, weight_max=3.0)
    big.update(1000.0)
    assert big.weight.item() == 3.0


def test_loss_errors():
    with pytest.raises(ValueError, match="valid: mul_log, add_linear, constraint"):
        LatencyLoss("sqrt", 1.0)
    with pytest.raises(ValueError, match="> 0"):
        LatencyLoss("add_linear", 0.0)


def _brute(log_probs, lut, fixed, target):
    best, arg = -np.inf, None
    for combo in itertools.product(*[range(len(r)) for r in lut]):
        lat = fixed + sum(r[i] for r, i in zip(lut, combo))
        lp = sum(r[i] for r, i in zip(log_probs, combo))
        if lat <= target and lp > best:
            best, arg = lp, list(combo)
    return best, arg


def test_budgeted_derivation_is_optimal_on_random_luts():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n_layers, n_cands = rng.integers(2, 6), rng.integers(2, 5)
        lut = [np.sort(rng.uniform(0.1, 5.0, n_cands)) for _ in range(n_layers)]
        lp = [np.log(rng.dirichlet(np.ones(n_cands))) for _ in range(n_layers)]
        fixed = rng.uniform(0, 2)
        lo, hi = latency_range_ms(lut, fixed)
        target = rng.uniform(lo, hi)
        picks = derive(lp, lut, fixed, target)
        lat = fixed + sum(r[i] for r, i in zip(lut, picks))
        assert lat <= target + 1e-9
        best, _ = _brute(lp, lut, fixed, target)
        assert sum(r[i] for r, i in zip(lp, picks)) == pytest.approx(best)


def test_feasible_target_is_always_met_on_large_random_luts():
    rng = np.random.default_rng(1)
    for _ in range(10):
        lut = [rng.uniform(0.1, 3.0, 7) for _ in range(20)]
        lut = [np.where(np.arange(7) == 6, 0.0, r) for r in lut]  # identity costs 0
        lp = [np.log(rng.dirichlet(np.ones(7) * 0.3)) for _ in range(20)]
        lo, hi = latency_range_ms(lut, 1.0)
        for target in (lo, lo + 0.1 * (hi - lo), 0.5 * (lo + hi)):
            picks = derive(lp, lut, 1.0, target)
            assert 1.0 + sum(r[i] for r, i in zip(lut, picks)) <= target + 1e-9


def test_argmax_when_feasible_and_errors():
    lut = [[1.0, 2.0], [1.0, 3.0]]
    lp = [np.log([0.2, 0.8]), np.log([0.9, 0.1])]
    assert derive(lp, lut, 0.5, 5.5) == [1, 0]
    assert derive(lp, lut, 0.5, None) == [1, 0]
    with pytest.raises(InfeasibleTarget, match="below the space's minimum 2.500 ms"):
        derive(lp, lut, 0.5, 2.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        derive(lp, lut, 0.5, 100.0)
    assert any("above the space's maximum" in str(x.message) for x in w)


def _brute_band(log_probs, lut, fixed, lo, hi):
    best, arg = -np.inf, None
    for combo in itertools.product(*[range(len(r)) for r in lut]):
        lat = fixed + sum(r[i] for r, i in zip(lut, combo))
        lp = sum(r[i] for r, i in zip(log_probs, combo))
        if lo <= lat <= hi and lp > best:
            best, arg = lp, list(combo)
    return best, arg


def test_band_derivation_uses_the_budget_and_is_near_optimal():
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(40):
        n_layers, n_cands = rng.integers(3, 6), rng.integers(2, 5)
        lut = [np.r_[0.0, np.sort(rng.uniform(0.5, 5.0, n_cands))] for _ in range(n_layers)]  # identity first
        lp = [np.log(rng.dirichlet(np.r_[8.0, np.ones(n_cands)])) for _ in range(n_layers)]  # identity favoured
        fixed = 1.0
        lo_s, hi_s = latency_range_ms(lut, fixed)
        target = rng.uniform(lo_s + 0.3 * (hi_s - lo_s), hi_s)
        best, arg = _brute_band(lp, lut, fixed, 0.9 * target, target)
        picks = derive(lp, lut, fixed, target, min_ms=0.9 * target)
        lat = fixed + sum(r[i] for r, i in zip(lut, picks))
        if arg is None:
            continue
        checked += 1
        assert 0.9 * target - 1e-9 <= lat <= target + 1e-9
        assert sum(r[i] for r, i in zip(lp, picks)) == pytest.approx(best, abs=1e-6)
    assert checked > 20


def test_band_derivation_falls_back_with_a_warning_when_the_band_is_empty():
    lut = [[0.0, 5.0], [0.0, 5.0]]
    lp = [np.log([0.9, 0.1])] * 2
    with pytest.warns(UserWarning, match="no architecture lies in"):
        picks = derive(lp, lut, 1.0, 4.0, min_ms=3.8)  # only 1 ms and 6+ ms exist
    assert picks == [0, 0]


def test_a_budget_on_each_device_adds_a_term_each_with_its_own_multiplier():
    from supernet.loss import BudgetLoss
    ce = torch.tensor(1.0)
    one = BudgetLoss("constraint", {"vpu": 10.0}, weight_init=1.0)
    assert one(ce, {"vpu": torch.tensor(12.0)}).item() == pytest.approx(1.0 + 0.2)  # as LatencyLoss alone
    two = BudgetLoss("constraint", {"vpu": 10.0, "cpu": 20.0}, weight_init=1.0, eta=0.5)
    assert two(ce, {"vpu": torch.tensor(12.0), "cpu": torch.tensor(25.0)}).item() == pytest.approx(1.0 + 0.2 + 0.25)
    two.update({"vpu": 8.0, "cpu": 30.0})  # vpu under its budget, cpu over: only cpu's multiplier grows
    assert two.term("vpu").weight.item() == pytest.approx(0.9) and two.term("cpu").weight.item() == 1.25
    old = {"weight": torch.tensor(3.0)}  # a single-budget checkpoint from before several budgets
    one.load_state_dict(old)
    assert one.weight.item() == 3.0
