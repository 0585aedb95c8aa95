import math

import pandas as pd

from experiments.diagnostics.quad_conv_speed import main, mark_contended, summary, time_config


def test_quick_run_writes_tables(tmp_path):
    out = tmp_path / "speed"
    assert main(["--quick", "--out", str(out)]) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert set(df["pass"]) == {"forward", "train"} and set(df.threads) == {1}
    for col in ("separate_ms", "grouped_ms", "ratio", "ratio_min"):
        assert (df[col] > 0).all() and df[col].map(math.isfinite).all(), col
    assert (df.max_rel_diff <= 1e-5).all()  # the implementations were checked equal before timing
    md = out.with_suffix(".md").read_text()
    assert "Verdict:" in md and "| pass |" in md


def test_summary_leaves_out_contended_rows():
    rows = [time_config(4, 6, 3, 1, 1, "forward", repeats=2, warmup=0) for _ in range(2)]
    df = pd.DataFrame(rows)
    df["contended"] = [True, False]
    s = summary(df)
    assert s.rows.tolist() == [1] and s.contended.tolist() == [1]
    assert s.median_ratio.iloc[0] == df.ratio.iloc[1]


def _row(threads, sep, grp, sep_min=None, grp_min=None):
    return {"pass": "forward", "channels": 8, "size": 8, "kernel": 3, "batch": 1, "threads": threads,
            "separate_ms": sep, "grouped_ms": grp, "separate_min_ms": sep_min or sep, "grouped_min_ms": grp_min or grp,
            "ratio": grp / sep, "ratio_min": (grp_min or grp) / (sep_min or sep)}


def test_contention_flags():
    df = mark_contended(pd.DataFrame([_row(1, 1.0, 2.0), _row(2, 0.8, 1.5)]))
    assert df.contended.tolist() == [False, False]
    df = mark_contended(pd.DataFrame([_row(1, 1.0, 2.0), _row(2, 50.0, 10.0)]))  # 2 threads 50x slower than 1
    assert df.contended.tolist() == [False, True]
    df = mark_contended(pd.DataFrame([_row(1, 3.0, 2.0, sep_min=1.0)]))  # median 3x the fastest repeat
    assert df.contended.tolist() == [True]
