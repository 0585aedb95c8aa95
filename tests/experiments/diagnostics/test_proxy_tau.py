"""The training-free scores diagnostic, on real retrains of digits architectures (tiny)."""

import json

import pandas as pd

from experiments.diagnostics import proxy_tau
from experiments.search_vs_random import parse_grid, random_archs, recipe_dir, retrain_run, search_run

RECIPE = "train.epochs=2 train.batch_size=32 dataset.limit=256"
SEARCH = ("train.warmup_epochs=0 train.epochs=1 train.batch_size=32 log_devices=[vpu] dataset.limit=400 "
          "derive.method=budgeted")


def test_proxy_tau_reads_every_retrain_of_the_recipe_and_averages_seeds(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    (point,) = parse_grid("vpu:30ms")
    paths = random_archs(point, 3, "digits", tmp_path / "draws")
    recipe = RECIPE.split()
    results = [retrain_run(p, 0, recipe, "digits", root) for p in paths]
    second = retrain_run(paths[0], 1, recipe, "digits", root)
    args = ["--grid", "vpu:30ms,gpu:0.5ms", "--recipe", RECIPE, "--dataset", "digits", "--batch", "16",
            "--root", str(root), "--out", str(out)]
    assert proxy_tau.main(args) == 0
    rows = pd.read_csv(out / "proxy_tau_digits.csv")
    assert (rows.point == "vpu-30ms").sum() == 3  # nothing of this band lies in the gpu 0.5 ms one
    assert ((rows.latency_ms >= 27.0) & (rows.latency_ms <= 30.0)).all()
    first = rows[rows.choices == " ".join(results[0]["choices"])].iloc[0]
    assert first.seeds == 2 and abs(first.top1 - (results[0]["top1"] + second["top1"]) / 2) < 1e-9
    assert rows.naswot.notna().all() and rows.naswot.nunique() == 3 and rows.naswot_other.notna().all()
    # a partial-training score: the first of the two epochs' training accuracy, averaged over seeds
    hist = [pd.read_csv(retrain_run(paths[0], s, recipe, "digits", root)["run_dir"] + "/history.csv") for s in (0, 1)]
    assert "train_acc_ep2" not in rows
    assert abs(first.train_acc_ep1 - (hist[0].train_acc[0] + hist[1].train_acc[0]) / 2) < 1e-9
    md = (out / "proxy_tau_digits.md").read_text()
    assert "| vpu-30ms | standin/myriadvpu_openvino2019r2 | 3 |" in md and "gpu-0.5ms" not in md
    assert "tau train acc ep1" in md
    assert "| point | archs | tau top1 s0 | tau train acc ep1 s0 |" in md and "| vpu-30ms | 1 | - | - |" in md
    # a retrain of another recipe is not read
    other = recipe_dir(root, "digits", ["train.epochs=3"]) / "x-s0"
    other.mkdir(parents=True)
    (other / "results.json").write_text(json.dumps({**results[1], "top1": 0.0}))
    assert proxy_tau.main(args) == 0 and len(pd.read_csv(out / "proxy_tau_digits.csv")) == 3
    # --proxy-recipe: the same architectures under another recipe (results written here, one with two seeds)
    for i, r in enumerate(results):
        for seed, shift in ([(0, 0.01), (1, -0.01)] if i == 0 else [(0, 0.0)]):
            folder = recipe_dir(root, "digits", ["train.epochs=5"]) / f"{i}-s{seed}"
            folder.mkdir(parents=True)
            top1 = 1 - rows.set_index("choices").top1[" ".join(r["choices"])] + shift
            (folder / "results.json").write_text(json.dumps({**r, "top1": top1, "config": {"seed": seed}}))
    assert proxy_tau.main([*args, "--proxy-recipe", "train.epochs=5"]) == 0
    ranked = pd.read_csv(out / "proxy_tau_digits.csv")
    assert ((ranked.proxy_recipe_top1 - (1 - ranked.top1)).abs() < 1e-9).all()  # seeds averaged
    md = (out / "proxy_tau_digits.md").read_text()
    assert "tau recipe train.epochs=5" in md and "| archs in recipe |" in md
    header, row = (next(line for line in md.splitlines() if line.startswith(start))
                   for start in ("| point | predictor", "| vpu-30ms | standin"))
    cells = {k.strip(): v.strip() for k, v in zip(header.split("|"), row.split("|"))}
    assert cells["archs in recipe"] == "3"
    if ranked.top1.nunique() == 3:  # the other recipe ranks the band in reverse
        assert cells["tau recipe train.epochs=5"] == "-1"
    # --supernet: the same architectures scored in a search variant's supernet, a table of its own
    search_run(point, 0, root / "search" / "digits" / "tiny", SEARCH.split(), "digits")
    assert proxy_tau.main([*args, "--supernet", "tiny"]) == 0
    scored = pd.read_csv(out / "proxy_tau_digits_tiny.csv")
    assert len(scored) == 3 and scored.supernet.between(0, 1).all()
    md = (out / "proxy_tau_digits_tiny.md").read_text()
    assert "tau supernet" in md and "## Block effect in the supernet at vpu-30ms" in md
    assert "| identity | " in md and "| quadra_k3_e2 | " in md
    assert "supernet" not in pd.read_csv(out / "proxy_tau_digits.csv")


def test_proxy_tau_errors_name_the_problem(tmp_path, capsys):
    args = ["--dataset", "digits", "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    assert proxy_tau.main(args) == 1
    assert "no finished retrain of recipe" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cross_seed_ranks_one_seed_by_the_other():
    rows = [("a", 0, 0.1, 0.3), ("b", 0, 0.2, 0.2), ("c", 0, 0.3, 0.1), ("d", 0, 0.5, 0.5),
            ("a", 1, 0.1, 0.0), ("b", 1, 0.3, 0.0), ("c", 1, 0.2, 0.0)]
    per_run = pd.DataFrame(rows, columns=["choices", "seed", "top1", "train_acc_ep1"])
    out = proxy_tau.cross_seed(per_run)
    assert out["archs"] == 3  # d has no seed 1
    assert abs(out["tau top1 s0"] - 1 / 3) < 1e-9  # 2 concordant pairs, 1 discordant
    assert abs(out["tau train acc ep1 s0"] + 1 / 3) < 1e-9
    assert proxy_tau.retrained(per_run.assign(params=1, macs=1)).set_index("choices").seeds.to_dict() == {
        "a": 2, "b": 2, "c": 2, "d": 1}


def test_paired_tau_leaves_out_rows_missing_either_score():
    a = pd.Series([0.1, 0.2, 0.3, None, 0.5])
    b = pd.Series([1.0, 2.0, 3.0, 0.0, None])
    assert proxy_tau.paired_tau(a, b) == 1.0
    assert pd.isna(proxy_tau.paired_tau(a, b.where(b < 2.5)))  # two pairs left: no tau
