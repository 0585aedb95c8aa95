"""The measured-device reports: the terms diagnostic prices exactly like the product, and the breakdowns group right."""

import numpy as np
import pandas as pd
import pytest

from experiments.diagnostics.latency_terms import _fused, candidate_features
from experiments.measured_latency import breakdown
from latency.kernels import trace_kernels
from latency.nb201 import INPUT_SHAPE, build_nb201
from latency.reference_nets import build
from latency.standin import DEVICE_FEATURES, fused_mask, kernel_features

POOLS = "|avg_pool_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"


@pytest.mark.parametrize("which", ["nb201", "mobilenetv3small"])
def test_terms_diagnostic_prices_like_the_stand_in(which):
    """The diagnostic's features of cost model 3's terms (fusion ``pool``) are latency.standin's, so its trial
    of the committed terms is the committed fit."""
    ks = (trace_kernels(build_nb201(POOLS), INPUT_SHAPE) if which == "nb201"
          else trace_kernels(build("mobilenetv3small"), (1, 3, 224, 224)))
    assert _fused(ks, "pool") == fused_mask(ks)
    assert _fused(ks, "model 2") != fused_mask(ks) or which != "nb201"  # the NB201 net has ReLUs after pools
    ours, product = candidate_features(ks, "pool"), kernel_features(ks)
    for term in set(DEVICE_FEATURES["cortexA76cpu_tflite21"]) | set(DEVICE_FEATURES["myriadvpu_openvino2019r2"]):
        assert ours.get(term, 0.0) == pytest.approx(product[term], rel=1e-12), term
    assert product["n_model"] == 1.0
    assert (product["act_bytes"] > 0) == (which == "mobilenetv3small")  # hswish / hardsigmoid stay unfused


def test_breakdown_groups_by_quintile_and_op_count():
    rng = np.random.default_rng(0)
    y = np.linspace(1.0, 10.0, 50)
    df = pd.DataFrame({"measured_ms": y, "before device": 1.2 * y, "after device cv": y * (1 + rng.normal(0, 0.01, 50)),
                       "n_pool": [i % 2 for i in range(50)]})
    q = breakdown({"cpu": df}, "quintile")
    assert list(q["quintile"].unique()) == ["Q1", "Q2", "Q3", "Q4", "Q5"] and (q["n_models"] == 10).all()
    before = q[q.stand_in == "before"]
    assert np.allclose(before["mape_pct"], 20.0) and np.allclose(before["median_ratio"], 1.2)
    assert (q[q.stand_in == "after (CV)"]["mape_pct"] < 5).all()
    p = breakdown({"cpu": df}, "n_pool")
    assert sorted(p["n_pool"].unique()) == ["0", "1"] and (p["n_models"] == 25).all()
