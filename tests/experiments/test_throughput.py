import pandas as pd
import pytest
import torch

from experiments.throughput import BASELINES, FORMATS, QUADRA, in_formats, main, quad_impls, ratios, set_quad_impl
from search_spaces.quadranet import quadranet


def test_ratios_from_medians():
    rows = []
    for model, ms1, ips in [(QUADRA, 10.0, 50.0), ("convnext_t", 20.0, 25.0), ("hornet_t", 5.0, 100.0),
                            ("swin_t", 10.0, 40.0)]:
        for fmt, slow in (("nchw", 1.0), ("channels_last", 2.0 if model == QUADRA else 1.0)):
            rows += [{"model": model, "format": fmt, "batch": 1, "threads": 1, "ms_median": ms1 * slow,
                      "img_per_s": 1e3 / (ms1 * slow)},
                     {"model": model, "format": fmt, "batch": 32, "threads": 1, "ms_median": 32e3 / ips,
                      "img_per_s": ips}]
    macs = {QUADRA: 300, "convnext_t": 200, "hornet_t": 600, "swin_t": 300}
    r = ratios(pd.DataFrame(rows), macs)
    nchw = r[r["format"] == "nchw"].set_index("baseline")
    assert list(nchw.index) == list(BASELINES)
    assert nchw.latency_ratio_b1.tolist() == [0.5, 2.0, 1.0]
    assert nchw.throughput_ratio_b32.tolist() == [2.0, 0.5, 1.25]
    assert nchw.paper_throughput_ratio_A100["hornet_t"] == pytest.approx(1971 / 1254)
    assert nchw.macs_ratio.tolist() == [1.5, 0.5, 1.0]
    # each format is compared within itself: QuadraNet twice as slow in channels-last only
    assert r[r["format"] == "channels_last"].latency_ratio_b1.tolist() == [1.0, 4.0, 2.0]


def test_formats_copy_and_convert():
    net = torch.nn.Conv2d(3, 4, 3)
    got = in_formats({"m": net}, tuple(FORMATS))
    assert got[("m", "nchw")] is net and got[("m", "channels_last")] is not net
    assert got[("m", "channels_last")].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="valid: nchw, channels_last"):
        in_formats({"m": net}, ("nhwc",))


@pytest.mark.skipif(len(quad_impls()) < 2, reason="only one quadratic conv implementation in this checkout")
def test_impl_switch_keeps_the_function():
    torch.manual_seed(0)
    net = quadranet("quadranet25_xxs", input_shape=(3, 32, 32), num_classes=10).eval()
    for name, p in net.named_parameters():  # every branch matters
        if "gamma" in name:
            torch.nn.init.ones_(p)
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    assert set_quad_impl(net, quad_impls()[1]) == 25
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


def test_quick_run_writes_tables(tmp_path, capsys):
    main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert "latency_ratio_b1" in capsys.readouterr().out
    raw = pd.read_csv(tmp_path / "table1_throughput.csv")
    models = {QUADRA, *BASELINES} | {f"{QUADRA}[{i}]" for i in quad_impls()[1:]}
    assert set(raw.model) == models and set(raw.batch) == {1, 2} and (raw.ms_median > 0).all()
    assert set(raw["format"]) == set(FORMATS)
    rat = pd.read_csv(tmp_path / "table1_throughput_ratios.csv")
    assert len(rat) == 3 * len(quad_impls()) * len(FORMATS)
    idx = raw.set_index(["model", "format", "batch"]).ms_median
    expect = idx[(QUADRA, "channels_last", 1)] / idx[("swin_t", "channels_last", 1)]
    sel = (rat.quadranet == QUADRA) & (rat.baseline == "swin_t") & (rat["format"] == "channels_last")
    assert rat[sel].latency_ratio_b1.item() == pytest.approx(expect, rel=1e-3)
    assert (rat.macs_ratio > 0).all()
    assert "## Ratios" in (tmp_path / "table1_throughput.md").read_text()
