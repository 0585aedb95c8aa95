"""Table III (quadra vs proxyless search per device), end to end on digits (tiny)."""

import json

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


def test_pricing_reuse_rule_and_side_by_side_table():
    from pathlib import Path

    assert table3.same_tables("quadra", "gpu")  # the roofline prices every op under either pricing
    assert not table3.same_tables("quadra", "vpu")  # LN/GELU/Mul/Transpose/Add at 0 ms under nnmeter
    committed = pd.read_csv(Path(table3.__file__).parent / "results" / "table3_search_per_device.csv")
    vpu = committed[committed.device == "vpu"]
    lat = table3.priced_latencies("quadra", vpu[vpu.space == "quadra"].choices.iloc[0].split(), "nnmeter")
    assert lat["vpu"]["ms"] < vpu[vpu.space == "quadra"].vpu_ms.iloc[0]  # cheaper under nn-Meter's semantics
    assert lat["vpu"]["predictor"].endswith("+nnmeter-pricing") and lat["gpu"]["predictor"] == "standin/a100"
    md = table3.side_by_side(committed, vpu, "nnmeter")
    assert "| vpu | quadra | 142.5 | 142.5 | 312 |" in md and "| cpu | quadra |" in md and "not run" in md
    assert "Quadra minus proxyless" in md


@pytest.mark.slow
def test_schedules_retrain_the_same_exports_at_each_length(tmp_path):
    from search_spaces.spaces import get_space
    exports = tmp_path / "exports.csv"
    rows = [{"device": "vpu", "target_ms": 30.0, "space": space, "choices": " ".join(get_space(space).random_arch(1)
                                                                                       .choices)}
            for space in ("quadra", "proxyless")]
    pd.DataFrame(rows).to_csv(exports, index=False)
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--recipe", RECIPE, "--retrain-seeds", "0", "--schedules", "1,2", "--exports", str(exports)]
    assert table3.main(args) == 0
    runs = pd.read_csv(tmp_path / "out" / "table3_schedules.csv")
    assert len(runs) == 2 * 2 and set(runs.epochs) == {1, 2}
    assert all(len(json.loads(c)) == e for c, e in zip(runs.curve, runs.epochs))  # a test top-1 per epoch
    assert (runs.latency_ms > 0).all()  # each export's latency on its device under today's tables
    md = (tmp_path / "out" / "table3_schedules.md").read_text()
    assert "| vpu | 2 |" in md and "quadra_ahead_from_epoch" in md and "MBConv" in md
    assert (tmp_path / "out" / "table3_curves.png").stat().st_size > 1000
    assert table3.main([*args, "--report-only"]) == 0  # read back, nothing reruns


def test_verdict_lead_and_schedule_recipe():
    from experiments.table3_schedules import lead_from, schedule_recipe, verdicts
    runs = pd.DataFrame({"device": "vpu", "epochs": 2, "space": ["quadra", "quadra", "proxyless", "proxyless"],
                         "top1": [0.80, 0.82, 0.78, 0.78],
                         "curve": ["[0.5, 0.80]", "[0.4, 0.82]", "[0.6, 0.78]", "[0.6, 0.78]"]})
    (v,) = verdicts(runs).to_dict("records")
    assert v["quadra_minus_mbconv_pt"] == pytest.approx(3.0) and v["se_pt"] == pytest.approx(1.0)
    assert v["quadra_ahead_from_epoch"] == 2 and v["seeds"] == "2+2"
    assert lead_from([0.1, 0.5, 0.6], [0.2, 0.4, 0.5]) == 2
    assert lead_from([0.3, 0.1], [0.2, 0.4]) is None
    assert schedule_recipe(["train.epochs=2", "dataset.limit=30000"], 6) == [
        "dataset.limit=30000", "train.epochs=6", "eval.every_epoch=true"]


@pytest.mark.slow
def test_search_vs_random_again_at_a_longer_retrain(tmp_path):
    from experiments import schedule_vs_random
    from search_spaces.spaces import get_space
    space = get_space("quadra")
    rows = [{"kind": kind, "variant": "train" if kind == "searched" else "", "device": "vpu", "target_ms": 30.0,
             "seed": i, "top1": top1, "derivation": "random draw",
             "choices": " ".join(c.replace("quadra_", "") for c in space.random_arch(10 + i).choices)}
            for i, (kind, top1) in enumerate([("searched", 0.6), ("searched", 0.7), ("random", 0.5),
                                              ("random", 0.55), ("random", 0.4)])]
    csv = tmp_path / "search_vs_random.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--recipe", RECIPE, "--csv", str(csv), "--searched", "2", "--draws", "2", "--epochs", "2"]
    assert schedule_vs_random.main(args) == 0
    done = pd.read_csv(tmp_path / "out" / "schedule_vs_random_vpu-30ms.csv")
    assert list(done.kind) == ["searched"] * 2 + ["random"] * 2  # the first 2 draws only
    assert done.top1_long.between(0, 1).all() and list(done.top1) == [0.6, 0.7, 0.5, 0.55]
    md = (tmp_path / "out" / "schedule_vs_random_vpu-30ms.md").read_text()
    assert "| committed (2 epochs) |" in md and "| 2 epochs |" in md and "Kendall tau" in md
    assert schedule_vs_random.main([*args, "--report-only"]) == 0  # read back, nothing reruns
    with pytest.raises(SystemExit, match="no searched rows of variant 'select'"):
        schedule_vs_random.main([*args, "--variant", "select"])
