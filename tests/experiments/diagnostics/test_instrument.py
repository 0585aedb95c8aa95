"""The instrument diagnostic on real retrains of digits draws (tiny), at two training stem strides."""

import pandas as pd
import pytest

from experiments.diagnostics import instrument
from experiments.search_vs_random import LEGACY_STEM_STRIDE, Point, recipe_dir

RECIPE = "train.epochs=1 train.batch_size=32 dataset.limit=128"


@pytest.mark.slow
def test_instrument_splits_the_spread_and_gaps_the_2t_band_and_keeps_strides_apart(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    common = ["--dataset", "digits", "--root", str(root), "--out", str(out), "--recipe", RECIPE, "--jobs", "2",
              "--grid", "vpu:30ms,vpu:60ms", "--k", "3", "--seeds", "0,1"]
    assert instrument.main([*common, "--name", "s2"]) == 0
    rows = pd.read_csv(out / "instrument_digits_s2.csv")
    assert len(rows) == 12 and rows.groupby(["target_ms", "draw"]).seed.nunique().eq(2).all()
    assert (rows.stem_stride == LEGACY_STEM_STRIDE).all()
    assert rows[rows.target_ms == 60].latency_ms.between(54, 60).all()
    assert rows[rows.target_ms == 30].latency_ms.between(27, 30).all()
    md = (out / "instrument_digits_s2.md").read_text()
    assert "12 of 12 planned retrains finished" in md
    assert f"vpu: `{rows.predictor.iloc[0]}`" in md  # each device's predictor named
    assert "| vpu | 30 | 3 | 6 |" in md and "| vpu | 60 | 3 | 6 |" in md
    assert "gap_in_seed_std" in md
    # the gap is the difference of the two bands' means over draws of seed means
    means = rows.groupby(["target_ms", "draw"]).top1.mean().groupby("target_ms").mean()
    gap_line = next(line for line in md.splitlines() if line.startswith("| vpu | 30 | "))
    assert f"{means[30.0]:.4f}" in gap_line

    # stride 1: the same draws (choices) at another training shape, retrained in their own folders
    assert instrument.main([*common, "--train-stem-stride", "1", "--seeds", "0"]) == 0
    s1 = pd.read_csv(out / "instrument_digits_stride1_train-epochs-1-train-batch_size-32-dataset-limit-128.csv")
    assert (s1.stem_stride == 1).all() and len(s1) == 6
    assert set(s1.arch) == set(rows.arch)
    folders = sorted(p.name for p in recipe_dir(root, "digits", RECIPE.split()).iterdir())
    assert len(folders) == 18 and sum(f.split("-")[1] == "stem1" for f in folders) == 6
    # every recipe side by side, with its goals; the 2T row has no gap of its own
    both = pd.read_csv(out / "instrument_digits.csv")
    assert sorted(both.recipe.unique()) == ["s2", "stride1_train-epochs-1-train-batch_size-32-dataset-limit-128"]
    assert both.set_index(["recipe", "target_ms"]).gap_to_2T_pt.notna().to_dict() == {
        ("s2", 30.0): True, ("s2", 60.0): False, (both.recipe.max(), 30.0): True, (both.recipe.max(), 60.0): False}
    s2_30 = both[(both.recipe == "s2") & (both.target_ms == 30)].iloc[0]
    assert s2_30.gap_to_2T_pt == pytest.approx(100 * (means[60.0] - means[30.0]))
    assert both[both.recipe != "s2"].goals_met.eq("needs repeated seeds").all()  # one seed: no seed std
    assert "Which recipe can see architecture quality?" in (out / "instrument_digits.md").read_text()
    # nothing runs twice: --report-only reads the same retrains
    assert instrument.main([*common, "--name", "s2", "--report-only"]) == 0
    assert len(pd.read_csv(out / "instrument_digits_s2.csv")) == 12


def test_instrument_reports_partial_tables_and_exits_nonzero(tmp_path):
    out = tmp_path / "out"
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(out), "--recipe", RECIPE,
            "--grid", "vpu:30ms", "--k", "2", "--seeds", "0", "--report-only"]
    assert instrument.main(args) == 1  # nothing finished: no table
    assert not out.exists()


def test_draws_dir_keeps_the_benchmark_folder_at_the_first_stride(tmp_path):
    p = Point("vpu", "30ms")
    base = tmp_path / "random" / "digits"
    assert instrument.draws_dir(tmp_path, "digits", p, LEGACY_STEM_STRIDE) == base / "vpu-30ms"
    assert instrument.draws_dir(tmp_path, "digits", p, 1) == base / "stride1" / "vpu-30ms"
    assert instrument.default_name(2, instrument.DEFAULT_RECIPE) == "stride2"


def test_compare_lists_a_recipe_measured_at_one_point_without_a_gap(tmp_path):
    rows = pd.DataFrame({"device": "vpu", "target_ms": 30.0, "draw": [0, 0, 1, 1], "seed": [0, 1, 0, 1],
                         "top1": [0.80, 0.81, 0.90, 0.91], "blocks": 5, "stem_stride": 1,
                         "train_s_per_epoch": 10.0, "images_per_epoch": 30000.0, "arch": ["a", "a", "b", "b"]})
    rows.to_csv(tmp_path / "instrument_digits_one.csv", index=False)
    table = instrument.compare(tmp_path, "digits")
    (row,) = table.to_dict("records")
    assert row["recipe"] == "one" and pd.isna(row["gap_to_2T_pt"]) and row["goals_met"] == "spread yes"
    assert row["seed_std_pt"] == pytest.approx(100 * 0.005 * 2 ** 0.5)
    assert row["min_3ep_60k"] == pytest.approx(10.0 / 30000 * 180000 / 60)
