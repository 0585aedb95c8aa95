import json

import pandas as pd

from experiments.receptive_field import kernel_arch, main

FAST = ["--dataset", "digits", "--limit", "128", "--batch-size", "64", "--model", "quadranet25_xxs",
        "--profiles"]


def test_kernel_arch_changes_only_the_kernel():
    a3, a9 = (kernel_arch("quadranet36_xxs", k, (1, 28, 28), 10) for k in (3, 9))
    assert a3.macro == a9.macro and a3.macro.stem_stride == 2 and len(a3.choices) == 36
    assert set(a3.choices) == {"quadra_k3_e4"} and set(a9.choices) == {"quadra_k9_e4"}


def test_runs_per_kernel_table_and_resume(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "table4"
    argv = [*FAST, "--kernels", "3", "5", "--seeds", "0", "--root", str(root), "--out", str(out), "--",
            "dataset.test_limit=64"]
    assert main(argv) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert df.kernel.tolist() == [3, 5] and df.seeds.tolist() == [1, 1]
    assert df.top1_mean.between(0, 1).all() and (df.train_s_per_epoch > 0).all()
    assert df.params_M.iloc[1] > df.params_M.iloc[0]  # 5x5 quadratic depthwise kernels hold more weights
    assert df.paper_top1.tolist() == [80.6, 81.3]
    assert len(pd.read_csv(out.with_name("table4_runs.csv"))) == 2
    for k in (3, 5):
        r = json.loads((root / f"k{k}-seed0" / "results.json").read_text())
        assert set(r["choices"]) == {f"quadra_k{k}_e4"} and r["dataset"] == "digits" and r["epochs"] == 1
        assert r["num_test"] == 64  # the extra override reached the trainer
    md = out.with_suffix(".md").read_text()
    assert "Recipe: quadranet25_xxs" in md and "1 epoch(s) over 128 training images" in md
    stamp = (root / "k3-seed0" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0  # every results file exists: nothing is trained again
    assert "k3-seed0: " in (out_text := capsys.readouterr().out) and "skipped" in out_text and "trained" not in out_text
    assert (root / "k3-seed0" / "results.json").stat().st_mtime_ns == stamp
