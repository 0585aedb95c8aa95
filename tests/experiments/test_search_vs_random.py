"""The search-vs-random benchmark and the ranking diagnostic, end to end on digits (tiny)."""

import math
import threading

import pandas as pd
import pytest

from experiments import ranking, search_vs_random
from experiments.diagnostics import retrain_noise

SEARCH = ("train.warmup_epochs=0 train.epochs=1 train.batch_size=32 log_devices=[vpu] dataset.limit=400 "
          "derive.method=select derive.candidates=2 derive.eval_images=64")
RECIPE = "train.epochs=1 train.batch_size=32 dataset.limit=256"


@pytest.mark.slow
def test_benchmark_and_ranking_run_resume_and_share_retrains(tmp_path):
    common = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
              "--recipe", RECIPE, "--jobs", "2"]
    args = [*common, "--grid", "vpu:30ms", "--k", "3", "--seeds", "0", "--variant", "tiny", "--search", SEARCH]
    assert search_vs_random.main(args) == 0
    rows = pd.read_csv(tmp_path / "out" / "search_vs_random_digits.csv")
    assert sorted(rows.kind) == ["random", "random", "random", "searched"]
    assert ((rows.latency_ms >= 27.0) & (rows.latency_ms <= 30.0)).all()  # every draw and the export in the band
    summary = pd.read_csv(tmp_path / "out" / "search_vs_random_digits_summary.csv")
    assert len(summary) == 1 and 1 <= summary["rank"][0] <= 4 and summary.n_random[0] == 3
    # the merge into --out waits while another benchmark process holds that folder
    done = threading.Event()
    with search_vs_random._locked(tmp_path / "out"):
        writer = threading.Thread(target=lambda: (search_vs_random.report(
            rows.iloc[:1], tmp_path / "out", RECIPE.split(), "digits"), done.set()))
        writer.start()
        assert not done.wait(1.0)
    writer.join(60)
    assert done.is_set() and len(pd.read_csv(tmp_path / "out" / "search_vs_random_digits.csv")) == len(rows)
    assert (tmp_path / "out" / "search_vs_random_digits.png").stat().st_size > 0
    assert "| vpu | 30 | tiny |" in (tmp_path / "out" / "search_vs_random_digits.md").read_text()

    retrains = sorted((tmp_path / "runs" / "retrain").glob("*/*/results.json"))
    assert len(retrains) == 4
    stamps = [p.stat().st_mtime_ns for p in retrains]
    assert search_vs_random.main(args) == 0  # resumes: everything is done, nothing reruns
    assert [p.stat().st_mtime_ns for p in retrains] == stamps
    with pytest.raises(SystemExit, match="pick another --variant"):
        search_vs_random.main([*common, "--grid", "vpu:30ms", "--variant", "tiny", "--search", "seed=3"])

    # a derivation variant derives the finished supernet again: no new training, its export retrained
    rederive = [*common, "--grid", "vpu:30ms", "--k", "3", "--seeds", "0", "--variant", "tiny_budgeted",
                "--supernet-from", "tiny", "--search", SEARCH.replace("derive.method=select", "derive.method=budgeted")]
    assert search_vs_random.main(rederive) == 0
    folders = tmp_path / "runs" / "search" / "digits"
    base, again = (folders / v / "vpu-30ms" / "seed0" for v in ("tiny", "tiny_budgeted"))
    assert (again / "checkpoint.pt").stat().st_ino == (base / "checkpoint.pt").stat().st_ino  # linked, not retrained
    assert "most likely" in (again / "search.log").read_text()
    rows = pd.read_csv(tmp_path / "out" / "search_vs_random_digits.csv")
    assert set(rows.variant.dropna()) >= {"tiny", "tiny_budgeted"}
    n_retrains = len(sorted((tmp_path / "runs" / "retrain").glob("*/*/results.json")))

    # the ranking diagnostic reuses the same draws, retrains and supernet
    assert ranking.main([*common, "--device", "vpu", "--bands", "30ms", "--k", "3", "--variant", "tiny",
                         "--search", SEARCH]) == 0
    assert len(sorted((tmp_path / "runs" / "retrain").glob("*/*/results.json"))) == n_retrains
    table = pd.read_csv(tmp_path / "out" / "ranking_digits_tiny.csv")
    assert len(table) == 3 and table.supernet_top1.between(0, 1).all() and table.retrained_top1.between(0, 1).all()
    assert "Kendall tau" in (tmp_path / "out" / "ranking_digits_tiny.md").read_text()

    # retrain noise: the same draws and export, a second seed each; the seed-0 retrains are reused
    assert retrain_noise.main([*common, "--point", "vpu:30ms", "--k", "3", "--seeds", "0,1", "--variant", "tiny",
                               "--search-seeds", "0"]) == 0
    assert len(sorted((tmp_path / "runs" / "retrain").glob("*/*/results.json"))) == n_retrains + 4
    noise = pd.read_csv(tmp_path / "out" / "retrain_noise_digits_tiny_vpu-30ms.csv")
    assert len(noise) == 8 and sorted(noise.kind.unique()) == ["random", "searched"]
    assert noise.groupby("arch").seed.nunique().eq(2).all()
    assert "retrain noise" in (tmp_path / "out" / "retrain_noise_digits_tiny_vpu-30ms.md").read_text()


def test_noise_stats_separates_seed_noise_from_architecture_differences():
    rows = pd.DataFrame({"arch": ["a", "a", "b", "b", "c"], "top1": [0.80, 0.82, 0.90, 0.90, 0.70]})
    stats = retrain_noise.noise_stats(rows)
    assert stats["within_arch_std"] == pytest.approx((0.01 ** 2 * 2 / 2) ** 0.5)  # only "a" varies: 2 dof in all
    assert stats["between_arch_means_std"] == pytest.approx(pd.Series([0.81, 0.90, 0.70]).std())
    assert (stats["n_archs"], stats["n_retrains"]) == (3, 5)


def test_variance_components_take_the_seed_noise_out_of_the_spread_of_means():
    # seed deviations +-0.01 in every architecture; true means 0.80, 0.90, 0.70 (std 0.1)
    rows = pd.DataFrame({"arch": list("aabbcc"), "top1": [0.79, 0.81, 0.89, 0.91, 0.69, 0.71]})
    v = retrain_noise.variance_components(rows)
    assert v["sigma_e"] == pytest.approx(0.01 * 2 ** 0.5)  # within variance: 2 * 0.01^2 per group over 1 dof
    assert v["sigma_a"] == pytest.approx((0.1 ** 2 - 0.01 ** 2) ** 0.5)  # var of means 0.01, less var_e / 2
    # 90% interval of the variance of 3 means: 2 * 0.01 / chi2(2 dof) quantiles 5.991 and 0.1026
    assert v["sigma_a_lo"] == pytest.approx((2 * 0.01 / 5.9915 - 0.01 ** 2) ** 0.5, rel=1e-3)
    assert v["sigma_a_hi"] == pytest.approx((2 * 0.01 / 0.10259 - 0.01 ** 2) ** 0.5, rel=1e-3)
    same = pd.DataFrame({"arch": list("aabb"), "top1": [0.79, 0.81, 0.81, 0.79]})
    assert retrain_noise.variance_components(same)["sigma_a"] == 0.0  # means equal: nothing left but noise
    assert all(map(math.isnan, retrain_noise.variance_components(rows.drop_duplicates("arch")).values()))


def test_best_of_gain_matches_known_order_statistics():
    assert retrain_noise.best_of_gain(1.0, 1) == pytest.approx(0.0, abs=1e-9)
    assert retrain_noise.best_of_gain(2.0, 2) == pytest.approx(2 / math.pi ** 0.5)
    assert retrain_noise.best_of_gain(1.0, 10) == pytest.approx(1.5388, abs=1e-4)  # tabulated E[max of 10]
    with pytest.raises(ValueError, match="n must be"):
        retrain_noise.best_of_gain(1.0, 0)
    # picked by a score with noise as large as the spread: regression factor 1 / sqrt(2) of the oracle's gain
    assert retrain_noise.best_of_gain(1.0, 10, noise=1.0) == pytest.approx(1.5388 / 2 ** 0.5, abs=1e-4)
    assert retrain_noise.best_of_gain(0.0, 10, noise=1.0) == 0.0


def test_normal_tau_and_seed_tau():
    assert retrain_noise.normal_tau(0.0) == 0.0
    assert retrain_noise.normal_tau(1.0) == pytest.approx(1.0)
    assert retrain_noise.normal_tau(0.5) == pytest.approx(1 / 3)  # arcsin(1/2) = pi/6
    # seeds agree on a < b and a < c, disagree on b vs c: 2 concordant, 1 discordant pair; d lacks seed 1
    rows = pd.DataFrame({"arch": list("aabbccd"), "seed": [0, 1, 0, 1, 0, 1, 0],
                         "top1": [0.80, 0.81, 0.85, 0.88, 0.86, 0.84, 0.99]})
    assert retrain_noise.seed_tau(rows) == (pytest.approx(1 / 3), 3)
    assert math.isnan(retrain_noise.seed_tau(rows[rows.arch.isin(["a", "d"])])[0])


def test_grid_parsing_errors():
    assert [p.tag for p in search_vs_random.parse_grid("vpu:30ms,gpu:1ms")] == ["vpu-30ms", "gpu-1ms"]
    with pytest.raises(ValueError, match="DEVICE:TARGET"):
        search_vs_random.parse_grid("vpu30ms")
    with pytest.raises(ValueError):
        search_vs_random.parse_grid("vpu:30")


@pytest.mark.slow
def test_budget_grid_reports_exports_in_the_band(tmp_path):
    from experiments import budget_grid
    code = budget_grid.main(["--grid", "vpu:30ms,gpu:1ms", "--root", str(tmp_path / "runs"), "--out",
                             str(tmp_path / "out"), "--search", budget_grid.SHORT + " derive.candidates=4"])
    table = pd.read_csv(tmp_path / "out" / "budget_grid.csv")
    assert code == 0 and len(table) == 2 and table.in_band.all()
    assert ((table.used >= 0.9) & (table.used <= 1.0)).all()
    assert "2/2 exports within" in (tmp_path / "out" / "budget_grid.md").read_text()


def test_summary_delta_and_its_standard_error():
    rows = pd.DataFrame([{"device": "vpu", "target_ms": 30.0, "kind": "random", "variant": "", "top1": v,
                          "latency_ms": 28.0} for v in (0.88, 0.89, 0.90, 0.91)]
                        + [{"device": "vpu", "target_ms": 30.0, "kind": "searched", "variant": "x", "top1": v,
                            "latency_ms": 29.0} for v in (0.90, 0.91)])
    (r,) = search_vs_random.summarize(rows).to_dict("records")
    assert r["delta_vs_random_pt"] == pytest.approx(100 * (0.905 - 0.895))
    std = pd.Series([0.88, 0.89, 0.90, 0.91]).std(ddof=1)
    assert r["delta_se_pt"] == pytest.approx(100 * std * (1 / 2 + 1 / 4) ** 0.5)
    assert r["rank"] == 2 and r["used"] == pytest.approx(29 / 30)
    assert "| +1.00 (1.12) | 2 |" in search_vs_random.markdown(search_vs_random.summarize(rows), [], "")


def test_provenance_note_names_each_predictor_kind():
    note = search_vs_random.provenance_note(pd.Series(
        ["standin/a100", "standin/cortexA76cpu_tflite21", "standin/a100", "nnmeter/myriadvpu_openvino2019r2", ""]))
    assert "`standin/a100` is an uncalibrated roofline stand-in, not nn-Meter" in note
    assert "`standin/cortexA76cpu_tflite21` is a calibrated stand-in, not nn-Meter" in note
    assert "`nnmeter/myriadvpu_openvino2019r2` is nn-Meter's built-in predictor" in note
    assert note.count("standin/a100") == 1


@pytest.mark.slow
def test_supernet_recipes_score_a_committed_pool_per_point(tmp_path):
    from experiments import supernet_recipes
    from search_spaces.spaces import get_space
    space = get_space("quadra")
    pools = []
    for device, target in (("vpu", 15.0), ("gpu", 1.0)):
        rows = [{"kind": "random", "device": device, "target_ms": target, "top1": 0.5 + 0.01 * i,
                 "choices": " ".join(c.replace("quadra_", "") for c in space.random_arch(100 * i + len(pools)).choices)}
                for i in range(4)] + [{"kind": "searched", "device": device, "target_ms": target, "top1": 0.9,
                                       "choices": " ".join(["identity"] * 20)}]
        pools.append(tmp_path / f"{device}.csv")
        pd.DataFrame(rows).to_csv(pools[-1], index=False)
    args = ["--dataset", "digits", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--recipes", "band,sandwich", "--search", SEARCH, "--pool", ",".join(map(str, pools)),
            "--eval-images", "64"]
    assert supernet_recipes.main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "supernet_recipes.csv")
    assert list(table.recipe) == ["band", "sandwich"]
    assert {"tau vpu 15 ms", "tau gpu 1 ms", "tau_mean_within", "tau_all"} <= set(table.columns)
    assert table.tau_all.between(-1, 1).all() and (table.search_s > 0).all()
    kept = pd.read_csv(next((tmp_path / "runs").rglob(supernet_recipes.SCORES)))
    assert len(kept) == 8 and kept.supernet_top1.between(0, 1).all()  # the random draws only, kept for a rerun
    assert supernet_recipes.main([*args, "--report-only"]) == 0
    assert pd.read_csv(tmp_path / "out" / "supernet_recipes.csv").equals(table)
