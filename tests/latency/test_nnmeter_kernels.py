"""nn-Meter's own kernel detection on one QuadraBlock and one MBConv (offline, no predictor files)."""

import pytest

pytest.importorskip("nn_meter")
pytest.importorskip("onnxsim")

from experiments.diagnostics.nnmeter_kernels import block_view  # noqa: E402
from latency.nnmeter.semantics import PREDICTOR_KERNELS, nnmeter_kernel_name  # noqa: E402


def _priced(rows):
    return [(r["regressor"], r["features"]) for r in rows if r["priced"]]


def test_quadrablock_kernels_nnmeter_prices_and_drops():
    views = block_view("quadra_k3_e2", 32, 7)
    vpu_rows, vpu = views["myriadvpu_openvino2019r2"]
    a76_rows, a76 = views["cortexA76cpu_tflite21"]
    # VPU: three depthwise convs and two single-row fc; everything else at 0 ms
    assert [k for k, _ in _priced(vpu_rows)] == ["dwconv-bn-relu"] * 3 + ["fc"] * 2
    assert vpu["dropped (0 ms)"] == "Add x3, Gelu x1, LayerNormalization x2, Mul x3, Transpose x4"
    # the A76 has an add regressor: the three adds are priced there
    assert [k for k, _ in _priced(a76_rows)] == ["dwconv-bn-relu"] * 3 + ["add"] * 2 + ["fc"] * 2 + ["add"]
    assert "Add" not in a76["dropped (0 ms)"]
    # dwconv features are the real map (H=7, Cin=Cout=32, k=3); the fc features carry ONE row (49 ignored)
    dw, fc1, fc2 = _priced(vpu_rows)[0][1], _priced(vpu_rows)[3][1], _priced(vpu_rows)[4][1]
    assert dw.split()[:5] == ["7", "32", "32", "3", "1"]
    assert fc1.split()[:2] == ["32", "64"] and fc2.split()[:2] == ["64", "32"]
    assert float(fc1.split()[2]) == pytest.approx((2 * 32 + 1) * 64 / 2e6)
    assert vpu["features_share"] < 0.25 and vpu["macs_M"] == pytest.approx(a76["macs_M"])


def test_mbconv_is_priced_whole_but_its_residual_add_on_the_vpu():
    rows, row = block_view("mbconv_k3_e3", 24, 7, ("myriadvpu_openvino2019r2",))["myriadvpu_openvino2019r2"]
    assert [r["nnmeter_op"] for r in rows if r["priced"]] == ["conv-relu", "dwconv-relu", "conv"]
    assert row["dropped (0 ms)"] == "Add x1" and row["features_share"] == pytest.approx(1.0, abs=0.05)  # + bias terms


def test_kernel_names_follow_nnmeter():
    assert nnmeter_kernel_name("dwconv-relu") == "dwconv-bn-relu"
    assert nnmeter_kernel_name("add-relu") == "addrelu"
    assert "add" not in PREDICTOR_KERNELS["myriadvpu_openvino2019r2"]
