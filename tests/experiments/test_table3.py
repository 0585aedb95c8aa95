"""Table III (quadra vs proxyless search per device), end to end on digits (tiny)."""

import pandas as pd
import pytest

from experiments import table3
from tests.experiments.test_search_vs_random import RECIPE, SEARCH  # the same tiny recipes


@pytest.mark.slow
def test_table3_searches_both_spaces_and_reports_the_paper_columns(tmp_path):
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--recipe", RECIPE, "--grid", "vpu:30ms", "--retrain-seeds", "0", "--variant", "tiny",
            "--search", SEARCH]
    assert table3.main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "table3_search_per_device.csv")
    assert list(table.space) == ["quadra", "proxyless"]
    assert (table.vpu_ms <= 30.0).all() and (table.vpu_ms >= 27.0).all()  # both exports use the budget
    assert table.top1_mean.between(0, 1).all() and (table.macs_M > 0).all() and (table.host_ms > 0).all()
    assert table.vpu_predictor.str.startswith("standin/").all()
    assert table.host_predictor.str.startswith("measured/").all()
    assert table.paper_top1.tolist() == [73.2, 72.7]
    md = (tmp_path / "out" / "table3_search_per_device.md").read_text()
    assert "Quadra minus proxyless" in md and "| vpu | quadra |" in md
    searched = sorted(p.parent.parent.parent.name for p in (tmp_path / "runs" / "search").glob("*/*/*/seed0/arch.json"))
    assert searched == ["tiny", "tiny-proxyless"]
    assert table3.main([*args, "--report-only"]) == 0  # finished runs are read back, nothing reruns
    assert table3.main([*args, "--spaces", "quadra"]) == 0  # runs one space, still reports both
    assert len(pd.read_csv(tmp_path / "out" / "table3_search_per_device.csv")) == 2
    with pytest.raises(SystemExit):
        table3.main([*args, "--spaces", "mbconv"])
