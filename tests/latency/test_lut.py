import logging
import os
import re

import pytest
import torch
from torch import nn

from latency.base import Latency
from latency.lut import GLUE, LatencyTable, build_table, get_table
from latency.measured import MeasuredPredictor, available_cpus
from latency.profiles import profile_from_dict
from search_spaces.arch import build_net
from search_spaces.blocks import SKIP_OPS
from search_spaces.spaces import proxyless_space, quadra_space
from search_spaces.summary import count_macs


class MacsPredictor:
    """A deterministic additive predictor: 1 ms per 1e6 MACs + 0.01 ms per module call."""

    name, provenance = "test/macs", "test"

    def __init__(self, version="1"):
        self.version, self.calls = version, 0

    def module_ms(self, module: nn.Module, input_shape) -> Latency:
        self.calls += 1
        return Latency(count_macs(module, input_shape) / 1e6, self.name, self.provenance)


PROFILE = profile_from_dict({"name": "tiny", "input_shape": [1, 3, 32, 32], "backends": ["standin:x"]})


def _space(**kw):
    return quadra_space(widths=(8, 16), depths=(2, 2), input_shape=(3, 32, 32), num_classes=10, stem_stride=2, **kw)


def test_table_shape_and_identity_zero():
    t = build_table(_space(), PROFILE, MacsPredictor(), progress=False)
    assert t.pivot().shape == (4, 7)
    assert (t.pivot()["identity"] == 0).all()
    assert set(t.fixed.part) == {"stem", "transition1", "head"}
    lo, hi = t.range_ms()
    assert lo == pytest.approx(t.fixed_ms) and hi > lo


def test_candidates_of_equal_shape_are_priced_once():
    p = MacsPredictor()
    build_table(_space(), PROFILE, p, progress=False)
    assert p.calls == 2 * 6 + 3  # two distinct layer shapes x 6 blocks + 3 fixed parts


def test_additivity_of_an_additive_predictor():
    space = _space()
    t = build_table(space, PROFILE, MacsPredictor(), progress=False)
    for seed in range(5):
        arch = space.random_arch(seed)
        whole = count_macs(build_net(arch), (1, 3, 32, 32)) / 1e6
        assert t.arch_ms(arch) == pytest.approx(whole, rel=1e-6)


def test_cache_hit_miss_and_invalidation():
    space = _space()
    p1 = MacsPredictor("1")
    a = get_table(space, PROFILE, p1, progress=False)
    assert p1.calls > 0
    p1b = MacsPredictor("1")
    b = get_table(space, PROFILE, p1b, progress=False)  # hit: nothing priced
    assert p1b.calls == 0 and b.key == a.key
    pd_equal = a.layers.equals(b.layers)
    assert pd_equal
    p2 = MacsPredictor("2")  # predictor version changed -> rebuilt
    c = get_table(space, PROFILE, p2, progress=False)
    assert p2.calls > 0 and c.key != a.key
    p3 = MacsPredictor("1")  # space changed -> rebuilt
    d = get_table(_space(kernels=(3, 5)), PROFILE, p3, progress=False)
    assert p3.calls > 0 and d.key != a.key
    p4 = MacsPredictor("1")  # profile changed -> rebuilt
    other = profile_from_dict({"name": "tiny", "input_shape": [1, 3, 64, 64], "backends": ["standin:x"]})
    e = get_table(space, other, p4, progress=False)
    assert p4.calls > 0 and e.key != a.key


def test_json_round_trip():
    t = build_table(_space(), PROFILE, MacsPredictor(), progress=False)
    again = LatencyTable.from_json(t.to_json())
    assert again.layers.equals(t.layers) and again.fixed_ms == t.fixed_ms and again.key == t.key


def test_lut_uses_deployment_shape_not_training_shape():
    space = _space().with_input((1, 16, 16), 10, stem_stride=2)
    t = build_table(space, PROFILE, MacsPredictor(), progress=False)
    ref = build_table(_space(), PROFILE, MacsPredictor(), progress=False)
    assert t.layers.latency_ms.tolist() == ref.layers.latency_ms.tolist()
    assert torch.tensor(t.layer_ms()[0]).max() > 0


def _proxyless(**kw):
    return proxyless_space(widths=(8, 16, 16), depths=(2, 2, 1), strides=(2, 1, 2), input_shape=(3, 32, 32),
                           num_classes=10, stem_width=8, first_width=8, head_width=32, **kw)


def test_table_of_a_space_whose_searchable_layers_change_shape():
    """MBConv space: the first layer of a stage changes width/stride, so every layer's input shape must
    come from a net whose layers really map shapes (identity placeholders gave the wrong ones)."""
    space = _proxyless()
    assert any(not layer.shape_kept for layer in space.layers())
    t = build_table(space, PROFILE, MacsPredictor(), progress=False)
    assert t.ops() == [list(c) for c in space.all_candidates()]
    for seed in range(5):
        arch = space.random_arch(seed)
        whole = count_macs(build_net(arch), (1, 3, 32, 32)) / 1e6
        assert t.arch_ms(arch) == pytest.approx(whole, rel=1e-6)


class ScriptedTimings(MeasuredPredictor):
    """The measured backend with scripted samples: entry e (in order of first timing) takes 1 + 0.1 e ms;
    entry 0 is noisy (+-0.8 ms); entry 1 is 1.5 ms slower in the second pass, as under a load burst."""

    BURST_MS, NOISE_MS = 1.5, 0.8

    def __init__(self, **kw):
        super().__init__(threads=1, warmup=0, repeats=8, **kw)
        self.order, self.seen = {}, {}

    def measure(self, module, input_shape, repeats=None):
        entry = self.order.setdefault(id(module), len(self.order))
        one_pass = self.seen[id(module)] = self.seen.get(id(module), -1) + 1
        base = 1.0 + 0.1 * entry + (self.BURST_MS if entry == 1 and one_pass == 1 else 0.0)
        n = repeats or self.repeats
        noise = self.NOISE_MS if entry == 0 else 0.0
        return [base - noise] * (n // 2) + [base + noise] * (n - n // 2)


def test_measured_table_is_labelled_with_its_largest_spread_and_the_pass_difference():
    space = _space()
    t = build_table(space, PROFILE, ScriptedTimings(), progress=False, method="isolated")
    first, second = [op for op in space.candidates(space.layers()[0]) if op not in SKIP_OPS][:2]
    note = t.error_note
    assert "median of 8 runs per entry in 2 interleaved passes" in note
    # the widest entry (1.6 ms IQR, 160% of 1.0 ms), not the smallest IQR (0 ms) of most entries
    assert f"up to 160.0% (1.600 ms, layer 0 {first})" in note
    assert f"passes differ by up to 1.500 ms (81.1%, layer 0 {second})" in note  # 1.5 / median 1.85
    assert t.pivot().loc[0, second] == pytest.approx(1.1 + ScriptedTimings.BURST_MS / 2)  # median of both passes
    assert re.search(r"; load [\d.]+-[\d.]+ on \d+ CPUs$", note)  # the load while building


def test_one_pass_table_has_no_pass_difference():
    t = build_table(_space(), PROFILE, ScriptedTimings(table_passes=1), progress=False, method="isolated")
    assert "in 1 interleaved passes" in t.error_note and "passes differ" not in t.error_note


def test_measured_table_on_this_host(caplog):
    """Real timings of a tiny space: every entry priced, the label carries IQR and pass spread."""
    t = build_table(_space(), PROFILE, MeasuredPredictor(threads=1, warmup=1, repeats=4), progress=False)
    parts = t.fixed[t.fixed.part != GLUE]  # glue, the whole minus its parts, may be a hair below 0
    assert (t.layers[t.layers.op != "identity"].latency_ms > 0).all() and (parts.latency_ms > 0).all()
    assert re.search(r"median of 4 runs per entry in 2 interleaved passes; per-entry IQR [\d.]+% of the entry "
                     r"\(median\), up to [\d.]+% \([\d.]+ ms, .+\); passes differ by up to [\d.]+ ms", t.error_note)


@pytest.mark.parametrize("load,warned", [(99.0, True), (0.0, False)])
def test_building_on_a_loaded_machine_warns_in_one_line(monkeypatch, caplog, load, warned):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    with caplog.at_level(logging.WARNING, logger="latency.measured"):
        t = build_table(_space(), PROFILE, ScriptedTimings(), progress=False, method="isolated")
    records = [r for r in caplog.records if r.name == "latency.measured"]
    if warned:
        (record,) = records
        message = record.getMessage()
        assert "\n" not in message and f"load average 99.0 exceeds the {available_cpus()} CPUs" in message
    else:
        assert records == []
    assert f"load {load:.1f}-{load:.1f} on {available_cpus()} CPUs" in t.error_note

