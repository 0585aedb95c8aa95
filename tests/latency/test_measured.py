import math

import pytest
import torch
from torch import nn

from latency.base import MEASURED
from latency.measured import EntrySamples, MeasuredPredictor, host_cpu_name
from latency.profiles import make_backend


def small_conv():
    return nn.Conv2d(16, 16, 3, padding=1)


def big_conv():
    return nn.Conv2d(64, 64, 3, padding=1)  # 16x the MACs of small_conv at the same input size


def test_bigger_conv_measures_slower():
    p = MeasuredPredictor(threads=1, warmup=3, repeats=15)
    small = p.module_ms(small_conv(), (1, 16, 56, 56))
    big = p.module_ms(big_conv(), (1, 64, 56, 56))
    assert 0 < small.ms < big.ms
    assert math.isfinite(big.ms)


def test_result_fields():
    p = MeasuredPredictor(threads=1, warmup=1, repeats=5)
    lat = p.module_ms(small_conv(), (1, 16, 16, 16))
    assert lat.ms > 0 and math.isfinite(lat.ms)
    assert lat.provenance == MEASURED == p.provenance
    assert lat.predictor == p.name == "measured/host-cpu-1threads"
    assert lat.error_note.startswith("median of 5, IQR ")
    assert torch.__version__ in p.version and host_cpu_name() in p.version and "threads 1" in p.version


def test_threads_fixed_during_timing_and_restored():
    seen = []
    net = small_conv()
    net.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    old = torch.get_num_threads()
    target = 2 if old == 1 else 1
    MeasuredPredictor(threads=target, warmup=1, repeats=3).module_ms(net, (1, 16, 8, 8))
    assert set(seen) == {target}
    assert torch.get_num_threads() == old


def test_eval_no_grad_and_training_flag_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    modes = []
    net.register_forward_hook(lambda m, i, o: modes.append((m.training, torch.is_grad_enabled())))
    net.train()
    MeasuredPredictor(threads=1, warmup=1, repeats=2).module_ms(net, (1, 3, 8, 8))
    assert set(modes) == {(False, False)}
    assert net.training


def test_cuda_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        MeasuredPredictor(device="cuda")


def test_bad_arguments():
    with pytest.raises(ValueError):
        MeasuredPredictor(device="mps")
    with pytest.raises(ValueError):
        MeasuredPredictor(engine="tvm")
    with pytest.raises(ValueError):
        MeasuredPredictor(repeats=0)
    with pytest.raises(ValueError):
        MeasuredPredictor(table_passes=0)


def test_table_passes_share_the_repeats_and_key_the_cache():
    p = MeasuredPredictor(threads=1, warmup=1, repeats=15, table_passes=2)
    assert p.repeats_per_pass == 8 and "tables: 2 interleaved passes of 8 repeats" in p.version
    assert MeasuredPredictor(threads=1, warmup=1, repeats=15, table_passes=3).version != p.version
    host = make_backend("measured:cpu")
    assert host.table_passes >= 2 and host.threads == 1


def test_entry_samples_spread():
    e = EntrySamples("x", ((1.0, 1.0, 1.2), (2.0, 2.2, 2.0)))
    assert e.median_ms == pytest.approx(1.6) and e.pass_gap_ms == pytest.approx(1.0)
    assert e.iqr_ms == pytest.approx(0.95) and e.relative_iqr == pytest.approx(0.95 / 1.6)  # numpy quartiles


def test_onnxruntime_engine():
    p = MeasuredPredictor(threads=1, warmup=1, repeats=5, engine="onnxruntime")
    lat = p.module_ms(small_conv(), (1, 16, 16, 16))
    assert lat.ms > 0 and p.name == "measured/host-cpu-1threads-onnxruntime"
    assert "onnxruntime" in p.version


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing():
    net = small_conv()
    p = MeasuredPredictor(device="cuda", warmup=3, repeats=10)
    lat = p.module_ms(net, (1, 16, 56, 56))
    assert lat.ms > 0 and p.name.startswith("measured/cuda-")
    assert next(net.parameters()).device.type == "cpu"  # caller's module not moved
