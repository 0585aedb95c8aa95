"""A measured table timed in context of whole networks, and the check that it adds up to the whole network."""

import pytest

from latency.base import MEASURED
from latency.lut import (
    GLUE,
    TABLE_METHODS,
    LatencyTable,
    build_table,
    carrier_archs,
    measured_whole,
    plan_table,
    table_error_pct,
    table_from_context,
    table_vs_whole,
    whole_note,
)
from latency.measured import EntrySamples, MeasuredPredictor
from latency.profiles import load_profile, profile_from_dict
from search_spaces.blocks import SKIP_OPS
from search_spaces.spaces import proxyless_space, quadra_space
from tests.latency.test_lut import MacsPredictor

PROFILE = profile_from_dict({"name": "tiny", "input_shape": [1, 3, 32, 32], "backends": ["measured:cpu"]})


def _quadra():
    return quadra_space(widths=(8, 16), depths=(2, 2), input_shape=(3, 32, 32), num_classes=10, stem_stride=2)


def _proxyless():
    return proxyless_space(widths=(8, 16, 16), depths=(2, 2, 1), strides=(2, 1, 2), input_shape=(3, 32, 32),
                           num_classes=10, stem_width=8, first_width=8, head_width=32)


def _fast() -> MeasuredPredictor:
    return MeasuredPredictor(threads=1, warmup=1, repeats=4)


@pytest.mark.parametrize("make_space", [_quadra, _proxyless])
def test_the_carrier_networks_hold_every_candidate_of_every_layer(make_space):
    plan = plan_table(make_space(), PROFILE)
    carriers = carrier_archs(plan)
    held = {(n, op) for arch in carriers for n, op in enumerate(arch.choices)}
    assert held == {(n, op) for n, op, _ in plan.cells}
    assert len(carriers) == max(len(c) for c in plan.space.all_candidates())


def _samples(ms: float) -> EntrySamples:
    return EntrySamples("x", ((ms, ms), (ms, ms)))


def test_a_table_timed_in_context_adds_what_the_parts_leave_out_of_the_whole():
    """Each cell is its median in the carriers that hold it; ``glue`` is the whole minus the parts."""
    plan = plan_table(_quadra(), PROFILE)
    timed = []
    for j, arch in enumerate(carrier_archs(plan)):
        parts = {f"layer {n} {op}": _samples(1.0 + j) for n, op in enumerate(arch.choices) if op not in SKIP_OPS}
        parts.update({name: _samples(0.5) for name in plan.fixed_parts})
        whole = sum(s.median_ms for s in parts.values()) + 0.2 + 0.1 * j  # 0.2-0.8 ms outside every part
        timed.append((parts, _samples(whole)))
    cell_ms, fixed_ms, note = table_from_context(plan, timed, ())
    assert fixed_ms[GLUE] == pytest.approx(0.5)  # the median over the 7 carriers
    assert set(fixed_ms) == {*plan.fixed_parts, GLUE} and fixed_ms["stem"] == 0.5
    for (n, op, key), ms in zip(plan.cells, cell_ms, strict=True):
        j = plan.space.candidates(plan.space.layers()[n]).index(op)
        assert ms == (0.0 if key is None else 1.0 + j)
    assert note.startswith("layers timed in context of 7 networks; median of 4 runs per entry")


def test_a_measured_cpu_table_is_timed_in_context_on_this_host():
    space = _quadra()
    t = build_table(space, PROFILE, _fast(), progress=False)
    assert GLUE in set(t.fixed.part) and "in context of 7 networks" in t.error_note
    cells = t.layers.set_index("op").latency_ms
    assert (cells[~cells.index.isin(SKIP_OPS)] > 0).all() and (cells[cells.index.isin(SKIP_OPS)] == 0).all()
    isolated = build_table(space, PROFILE, _fast(), progress=False, method="isolated")
    assert GLUE not in set(isolated.fixed.part) and "in context" not in isolated.error_note
    with pytest.raises(ValueError, match="method=context is invalid for test/macs; valid: isolated"):
        build_table(space, PROFILE, MacsPredictor(), progress=False, method="context")


@pytest.mark.parametrize("method", TABLE_METHODS)
def test_host_additivity_check_on_a_tiny_space(method):
    """The table and the whole networks timed in the same passes; one row per architecture."""
    space = _quadra()
    archs = [space.random_arch(seed) for seed in range(3)]
    table, rows = table_vs_whole(space, PROFILE, _fast(), archs, method=method)
    assert isinstance(table, LatencyTable) and list(rows.arch) == [0, 1, 2]
    assert (GLUE in set(table.fixed.part)) == (method == "context")
    for arch, row in zip(archs, rows.itertuples(), strict=True):
        assert row.table_ms == pytest.approx(table.arch_ms(arch)) and row.whole_ms > 0
        assert row.error_pct == pytest.approx(table_error_pct(row.table_ms, row.whole_ms))
        assert row.choices == " ".join(arch.choices)
    # loose: a tiny network's whole is dominated by what the table prices as fixed parts and glue
    assert rows.error_pct.abs().median() < 50
    with pytest.raises(ValueError, match="method=whole is invalid; valid: context, isolated"):
        table_vs_whole(space, PROFILE, _fast(), archs, method="whole")


def test_a_measured_tables_sum_is_shown_with_its_whole_network():
    space = _quadra()
    arch = space.random_arch(0)
    host = build_table(space, PROFILE, _fast(), progress=False)
    assert host.provenance == MEASURED
    check = measured_whole(host, arch, PROFILE)
    assert check["whole_net_ms"] > 0
    assert check["table_error_pct"] == pytest.approx(table_error_pct(host.arch_ms(arch), check["whole_net_ms"]))
    note = whole_note({"ms": host.arch_ms(arch), **check})
    assert note == f" (whole network {check['whole_net_ms']:.3f} ms; table {check['table_error_pct']:+.1f}%)"
    standin = build_table(space, load_profile("vpu"), MacsPredictor(), progress=False)
    assert measured_whole(standin, arch, load_profile("vpu")) == {} and whole_note({"ms": 1.0}) == ""
