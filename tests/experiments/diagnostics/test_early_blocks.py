"""The early-blocks prediction test: picking by blocks in the leading stages, and a tiny run on digits."""

import pandas as pd
import pytest

from experiments.diagnostics import early_blocks
from search_spaces.spaces import quadra_space

RECIPE = "train.epochs=1 train.batch_size=32 dataset.limit=256"


def test_pairs_take_the_most_and_fewest_early_blocks_in_draw_order():
    space = quadra_space()  # stages of 4, 4, 8, 4 searchable layers
    ident = ["identity"] * 20

    def arch(*blocks):
        c = list(ident)
        for i in blocks:
            c[i] = "quadra_k3_e2"
        return tuple(c)

    a, b, c, d, e = arch(0, 5, 9), arch(12), arch(1, 2, 3, 19), arch(16), arch(4, 6)
    assert [early_blocks.early_blocks(space, x, 2) for x in (a, b, c, d, e)] == [2, 0, 3, 0, 2]
    assert early_blocks.early_blocks(space, a, 1) == 1 and early_blocks.early_blocks(space, a, 3) == 3
    assert early_blocks.pick_pairs(space, [a, b, c, d, e], 2, 3) == [(c, b), (a, d)]  # ties: first drawn first
    assert early_blocks.pick_pairs(space, [b, d], 2, 1) == []  # equal counts: nothing to compare


@pytest.mark.slow
def test_early_blocks_runs_on_digits_and_resumes(tmp_path):
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--recipe", RECIPE, "--jobs", "2", "--pool", "20", "--pairs", "1"]
    assert early_blocks.main(args) == 0
    rows = pd.read_csv(tmp_path / "out" / "early_blocks_digits_vpu-30ms.csv")
    assert sorted(rows.role) == ["early", "late"] and (rows.pair == 0).all()
    early, late = (rows[rows.role == r].iloc[0] for r in ("early", "late"))
    assert early.early_blocks > late.early_blocks
    assert ((rows.latency_ms >= 27.0) & (rows.latency_ms <= 30.0)).all() and rows.top1.between(0, 1).all()
    assert "pair 0: early - late" in (tmp_path / "out" / "early_blocks_digits_vpu-30ms.md").read_text()
    retrains = sorted((tmp_path / "runs" / "retrain").glob("*/*/results.json"))
    assert len(retrains) == 2
    stamps = [p.stat().st_mtime_ns for p in retrains]
    assert early_blocks.main([*args, "--report-only"]) == 0 and early_blocks.main(args) == 0  # nothing reruns
    assert [p.stat().st_mtime_ns for p in retrains] == stamps
