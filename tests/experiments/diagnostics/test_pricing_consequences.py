"""The max-MACs dynamic program against brute force, and one real candidate under each pricing variant."""

import itertools

import numpy as np
import pandas as pd
import pytest

from experiments.diagnostics.pricing_consequences import _variant_ms, max_macs
from latency.kernels import trace_kernels
from latency.standin import load_standin
from search_spaces.blocks import make_op


def test_dynamic_program_matches_brute_force():
    rng = np.random.default_rng(0)
    rows = [{"layer": layer, "op": f"op{i}", "macs": 0 if i == 0 else int(rng.integers(1, 100)),
             "ms": 0.0 if i == 0 else float(rng.uniform(0.1, 3.0))} for layer in range(5) for i in range(4)]
    cands = pd.DataFrame(rows)
    for budget in (0.5, 2.0, 4.5, 7.0):
        macs, picks, ms = max_macs(cands, budget, "ms")
        groups = [g for _, g in cands.groupby("layer")]
        combos = list(itertools.product(*[list(zip(g.ms, g.macs)) for g in groups]))
        loose = max(sum(c[1] for c in combo) for combo in combos if sum(c[0] for c in combo) <= budget)
        strict = max(sum(c[1] for c in combo) for combo in combos  # the DP rounds each entry up to 1 us
                     if sum(c[0] for c in combo) <= budget - 5 * 1e-3)
        assert strict <= macs <= loose and ms <= budget
        chosen = sum(int(g.macs[g.op == p].iloc[0]) for g, p in zip(groups, picks))
        assert chosen == macs


def test_variants_of_one_quadrablock_order_as_their_causes():
    ks = trace_kernels(make_op("quadra_k7_e4", 64, 64), (1, 64, 28, 28))
    key = "myriadvpu_openvino2019r2"
    v = {name: _variant_ms(ks, name, key) for name in ("device", "drop-only", "nnmeter", "nnmeter, no dw overhead")}
    assert v["device"] == pytest.approx(load_standin(key).kernels_ms(ks))
    assert v["nnmeter"] == pytest.approx(load_standin(key, pricing="nnmeter").kernels_ms(ks))
    assert v["device"] > v["drop-only"] > v["nnmeter"] > v["nnmeter, no dw overhead"]
    n_dw = load_standin(key).coefficients["n_dw"]
    assert v["nnmeter"] - v["nnmeter, no dw overhead"] == pytest.approx(3 * n_dw)
