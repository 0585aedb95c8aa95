"""The supernet-agreement diagnostic: the overlap count, and a tiny run on digits that resumes from its cache."""

import pandas as pd
import pytest

from experiments import ranking
from experiments.diagnostics import agreement

SEARCH = ("train.warmup_epochs=0 train.epochs=1 train.batch_size=32 log_devices=[vpu] dataset.limit=400 "
          "derive.method=budgeted")


def test_top_overlap_counts_shared_members_of_the_two_top_sets():
    a = pd.Series([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert agreement.top_overlap(a, a, 0.3) == (3, 3)
    assert agreement.top_overlap(a, -a, 0.3) == (0, 3)
    b = pd.Series([0.9, 0.0, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.8])  # a's second best is b's worst
    assert agreement.top_overlap(a, b, 0.2) == (1, 2)


@pytest.mark.slow
def test_agreement_runs_on_digits_and_scores_each_pool_once(tmp_path):
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--variant", "tiny", "--search", SEARCH, "--pool", "6", "--seeds", "0,1", "--eval-images", "40"]
    assert agreement.main(args) == 0
    rows = pd.read_csv(tmp_path / "out" / "agreement_digits_tiny_vpu-30ms.csv")
    assert len(rows) == 6 and rows.seed0.between(0, 1).all() and rows.seed1.between(0, 1).all()
    assert ((rows.latency_ms >= 27.0) & (rows.latency_ms <= 30.0)).all() and rows.choices.is_unique
    md = (tmp_path / "out" / "agreement_digits_tiny_vpu-30ms.md").read_text()
    assert "| seed0 vs seed1 |" in md and "| seed1 gamma / init |" in md
    folder = tmp_path / "runs" / "search" / "digits" / "tiny" / "vpu-30ms"
    effect = ranking.block_effect(ranking.load_supernet(folder / "seed0", 40)).set_index("op")
    assert effect.top1.between(0, 1).all() and len(effect) == 7
    assert effect.loc["identity", "logit_change"] == 0 and effect.gamma_over_init.drop("identity").gt(0).all()
    assert effect.logit_change.drop("identity").gt(0).all()  # pinning a block everywhere changes the output
    caches = sorted(folder.glob("seed*/agreement_pool6_seed1_images40.csv"))
    assert len(caches) == 2
    stamps = [p.stat().st_mtime_ns for p in caches]
    assert agreement.main([*args, "--report-only"]) == 0  # the cached scores are read back, not recomputed
    assert [p.stat().st_mtime_ns for p in caches] == stamps
    assert pd.read_csv(tmp_path / "out" / "agreement_digits_tiny_vpu-30ms.csv").equals(rows)
    with pytest.raises(SystemExit):
        agreement.main([*args, "--seeds", "0"])
    with pytest.raises(SystemExit):
        agreement.main([*args, "--seeds", "0,x"])
