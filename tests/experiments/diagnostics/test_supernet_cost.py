import math

import pytest
import torch

from experiments.diagnostics.supernet_cost import ROWS, cost_per_iteration, force_arch_sample, main, report, run
from search_spaces.spaces import get_space
from supernet.supernet import Supernet


def tiny_space():
    return get_space("quadra", widths=(8, 16), depths=(2, 2), kernels=(3, 5), expansions=(2,))


@pytest.fixture(scope="module")
def table():
    return run(batch=8, repeats=2, warmup=1, arch="random", seed=1, space=tiny_space(), threads=1, lut="synthetic")


def test_table_rows_and_values(table):
    assert list(table.step) == list(ROWS)
    for col in ("median_ms", "time_ratio", "saved_MiB", "bytes_ratio", "saved_bytes"):
        assert (table[col] > 0).all() and table[col].map(math.isfinite).all(), col
    b = dict(zip(table.step, table.saved_bytes))
    assert b["supernet weight step"] == b["standalone step"]  # same ops pinned: same saved tensors
    assert b["arch step full"] > b["arch step two"]
    assert b["arch step two"] <= 1.05 * b["standalone step"]


def test_cost_and_report(table):
    cost = cost_per_iteration(table, (1, 5))
    assert len(cost) == 4 and (cost.cost_ratio > 0).all()
    text = report(table, cost)
    assert "PASS" in text or "MISS" in text
    assert "threads 1" in text


def test_forced_sample_keeps_active_path():
    space = tiny_space().with_input((1, 28, 28), 10, 2)
    model = Supernet(space)
    choices = space.random_arch(3).choices
    gen = torch.Generator().manual_seed(0)
    for mode in ("two", "full_v2", "full"):
        force_arch_sample(model, mode, choices, gen)
        for m, name in zip(model.mixed_ops(), choices):
            s = m.sample
            assert s.active == m.names.index(name) and s.active in s.involved
            assert len(s.involved) == (2 if mode == "two" else len(m.names))
            g = s.gates.detach()
            assert float(g[s.active]) == 1.0 and float(g.sum()) == pytest.approx(1.0)


def test_main_writes_csv(tmp_path, monkeypatch, capsys):
    import experiments.diagnostics.supernet_cost as sc
    monkeypatch.setattr(sc, "get_space", lambda name: tiny_space())
    out = tmp_path / "cost.csv"
    assert main(["--batch", "4", "--repeats", "1", "--warmup", "0", "--lut", "synthetic", "--out", str(out)]) == 0
    assert "arch step two" in capsys.readouterr().out
    assert out.read_text().splitlines()[0].startswith("step,median_ms")
