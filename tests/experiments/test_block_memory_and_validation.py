import pytest

from experiments.block_memory import run as block_memory
from experiments.latency_validation import additivity, calibration, ranges


def test_block_memory_ratios():
    df = block_memory(channels=(16,), layers=2, batch=4, hw=8).set_index("block")
    r = df.ratio_to_convnext
    assert r["ConvNeXt block k7 e4"] == 1.0
    assert r["QuadraBlock k7 e4"] > 1.05  # keeps both projections of the quadratic conv
    assert r["QuadraBlock k7 e4 (memory-saving)"] == pytest.approx(1.0)  # recomputes them instead
    assert r["MBConv k7 e4"] > 1.0 and r["identity"] == 0.0


def test_latency_validation_tables():
    report, table = calibration()
    assert set(report.device) >= {"cortexA76cpu_tflite21", "myriadvpu_openvino2019r2"}
    assert table.shape[0] == 18
    add = additivity(devices=("vpu",), n_archs=3)
    assert len(add) == 3 and (add.error_pct.abs() < 1e-6).all()  # the stand-in is additive here
    r = ranges(devices=("vpu", "gpu")).set_index("device")
    assert r.loc["vpu", "min_ms"] <= 30.0 <= r.loc["vpu", "max_ms"]
    assert (r.provenance == "calibrated stand-in (not nn-Meter)").all()
