"""pricing=device|nnmeter: the stand-ins price what nn-Meter's predictor would, tables are keyed by it, and a
tiny search runs end to end under each."""

import pytest

from latency.kernels import trace_kernels
from latency.lut import cache_dir, get_table
from latency.profiles import load_profile, profile_from_dict, resolve_predictor
from latency.standin import load_standin, nnmeter_kernels
from search_spaces.blocks import make_op
from search_spaces.spaces import get_space
from tests.nas.test_search import ONE, _cfg

VPU, A76 = "myriadvpu_openvino2019r2", "cortexA76cpu_tflite21"


def _block(op, c, s):
    return trace_kernels(make_op(op, c, c), (1, c, s, s))


def test_nnmeter_pricing_keeps_only_what_nnmeter_prices():
    ks = _block("quadra_k5_e4", 32, 14)
    vpu = load_standin(VPU, pricing="nnmeter").breakdown_ms(ks)
    a76 = load_standin(A76, pricing="nnmeter").breakdown_ms(ks)
    full = load_standin(VPU).breakdown_ms(ks)
    assert set(vpu) == {"dwconv", "fc"} and set(a76) == {"dwconv", "fc", "add"}
    assert {"layernorm", "gelu", "mul", "transpose", "add"} <= set(full)
    assert vpu["dwconv"] == pytest.approx(full["dwconv"])  # the same per-kernel costs
    # the two fc are priced as one row each: 32->128 and 128->32 vectors
    seen = [k for k in nnmeter_kernels(ks, VPU) if k is not None and k.type == "fc"]
    assert [(k.input_shape, k.output_shape, k.macs) for k in seen] == [((1, 32), (1, 128), 4096),
                                                                      ((1, 128), (1, 32), 4096)]
    # the row-dependent part (all but the per-kernel overhead, 2 x n_conv since cost model 3) shrinks 196-fold
    overhead = 2 * load_standin(VPU).coefficients["n_conv"]
    assert vpu["fc"] - overhead < (full["fc"] - overhead) / 10
    assert vpu["fc"] == pytest.approx(sum(load_standin(VPU).kernel_ms(k) for k in seen))


def test_mbconv_costs_the_same_on_the_a76_and_loses_its_residual_add_on_the_vpu():
    ks = _block("mbconv_k3_e6", 40, 14)
    assert load_standin(A76, pricing="nnmeter").kernels_ms(ks) == pytest.approx(load_standin(A76).kernels_ms(ks))
    dev, nnm = load_standin(VPU).breakdown_ms(ks), load_standin(VPU, pricing="nnmeter").breakdown_ms(ks)
    assert "add" in dev and "add" not in nnm and nnm["dwconv"] == pytest.approx(dev["dwconv"])
    # a ResNet-style add -> relu is nn-Meter's addrelu kernel, which the VPU predictor has
    from latency.kernels import Kernel
    add = Kernel("add", (1, 8, 4, 4), (1, 8, 4, 4), bytes=1536, in_ids=(0, 1), out_id=2)
    relu = Kernel("relu", (1, 8, 4, 4), (1, 8, 4, 4), bytes=1024, op="relu", in_ids=(2,), out_id=3)
    assert [k is not None for k in nnmeter_kernels([add, relu], VPU)] == [True, False]
    assert [k is not None for k in nnmeter_kernels([add], VPU)] == [False]


def test_provenance_names_and_table_keys_follow_the_pricing():
    dev, nnm = load_standin(VPU), load_standin(VPU, pricing="nnmeter")
    assert dev.provenance == "calibrated stand-in (not nn-Meter)"
    assert "nn-Meter semantics (LN/GELU/Mul/Transpose/Add at 0 ms" in nnm.provenance
    assert "Add" not in load_standin(A76, pricing="nnmeter").provenance.split("semantics")[1].split("at 0")[0]
    assert dev.name != nnm.name and dev.version != nnm.version
    gpu = resolve_predictor(load_profile("gpu", pricing="nnmeter"))  # the roofline has no nn-Meter semantics
    assert gpu.pricing == "device" and "semantics" not in gpu.provenance
    space = get_space("quadra")
    t_dev, t_nnm = (get_table(space, load_profile("vpu", pricing=p), progress=False) for p in ("device", "nnmeter"))
    assert t_dev.key != t_nnm.key and t_nnm.provenance == nnm.provenance
    assert (cache_dir() / f"quadra-vpu-nnmeter-{t_nnm.key}.json").is_file()
    assert (cache_dir() / f"quadra-vpu-device-{t_dev.key}.json").is_file()
    assert t_nnm.range_ms()[1] < t_dev.range_ms()[1]
    with pytest.raises(ValueError, match="pricing=chip is invalid; valid: device, nnmeter"):
        profile_from_dict({"name": "x", "input_shape": [1, 3, 8, 8], "backends": ["standin:a100"], "pricing": "chip"})


@pytest.mark.parametrize("pricing", ["device", "nnmeter"])
def test_a_tiny_search_under_each_pricing(tmp_path, pricing):
    from nas.search import search

    meta = search(_cfg(*ONE, "device=vpu", "latency=20ms", f"pricing={pricing}", "derive.method=budgeted",
                       "dataset.limit=400"), tmp_path)
    lat = meta["latency_ms"]["vpu"]
    assert lat["ms"] <= 20.0 and meta["meets_target"]
    assert ("nn-Meter semantics" in lat["provenance"]) == (pricing == "nnmeter")
    assert "stand-in" in lat["provenance"]
    assert meta["config"]["pricing"] == pricing


def test_a_bad_pricing_is_a_one_line_config_error():
    from nas.config import ConfigError, check_config

    with pytest.raises(ConfigError, match=r"^pricing=nnmeters is invalid; valid: device, nnmeter$"):
        check_config(_cfg("pricing=nnmeters"), "search")


def test_a_run_saved_before_pricing_existed_resumes_as_device_pricing(tmp_path):
    from nas.checkpoint import CheckpointError, check_resume_config
    from nas.search import _with_pricing

    new = {"pricing": "device", "seed": 0}
    check_resume_config(_with_pricing({"seed": 0}), new, tmp_path / "old")  # no error
    with pytest.raises(CheckpointError, match="differs in: pricing"):
        check_resume_config(_with_pricing({"seed": 0}), {**new, "pricing": "nnmeter"}, tmp_path / "old")
