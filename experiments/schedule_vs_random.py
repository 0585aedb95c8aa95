"""Does the search's benchmark verdict survive a longer retrain? ``python -m experiments.schedule_vs_random``.

Takes one committed search-vs-random table (``--csv``, default the gpu 1 ms point's), the exports of one
search variant (``--variant``, its first ``--searched`` search seeds) and its first ``--draws`` random draws,
and retrains them all again with the benchmark recipe at ``--epochs`` epochs (only the length changes; each
with retrain seed 0, as the committed draws were). Reports, at the committed length and at the new one, the
searched mean minus the random mean with its standard error and the searched exports' mean rank among the
draws, plus Kendall tau between the two lengths' accuracies of the same networks: does the ranking keep?

Writes ``schedule_vs_random_<point>.{csv,md}``; runs resume from their folders (shared with the other
benchmarks), ``--report-only`` tables what has finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, mannwhitneyu

from experiments.markdown import md_table, report
from experiments.search_vs_random import ROOT, add_run_args, full_choices, retrain_all, training_arch_file
from experiments.table3_schedules import schedule_recipe


def picked(rows: pd.DataFrame, variant: str, searched: int, draws: int) -> pd.DataFrame:
    """The first ``searched`` search seeds of ``variant`` and the first ``draws`` random draws."""
    s = rows[(rows.kind == "searched") & (rows.variant == variant)].sort_values("seed").head(searched)
    r = rows[rows.kind == "random"].head(draws)
    if s.empty:
        raise SystemExit(f"no searched rows of variant {variant!r}; the table has: "
                         f"{', '.join(sorted(rows[rows.kind == 'searched'].variant.unique()))}")
    return pd.concat([s, r], ignore_index=True)


def arch_files(rows: pd.DataFrame, dataset: str, folder: Path) -> list[Path]:
    """An arch.json per row, rebuilt from its choices at the dataset's shape with the space's training stem
    stride (the shape the committed retrains used)."""
    return [training_arch_file("quadra", full_choices(r.choices), dataset,
                               {"derivation": r.derivation,
                                "search": {"dataset": dataset, "device": r.device, "target_ms": r.target_ms}},
                               folder / f"{r.kind}-{i}" / "arch.json") for i, r in enumerate(rows.itertuples())]


def verdict(rows: pd.DataFrame, col: str) -> dict:
    """Searched mean minus random mean (pt) with its SE, the searched mean rank among the draws, and the
    one-sided rank-sum p-value (searched above random)."""
    s, r = rows[rows.kind == "searched"][col], rows[rows.kind == "random"][col]
    se = np.sqrt(s.var(ddof=1) / len(s) + r.var(ddof=1) / len(r))
    ranks = [1 + int((r > v).sum()) for v in s]
    return {"searched": s.mean(), "random": r.mean(), "random_std": r.std(ddof=1),
            "delta_pt": 100 * (s.mean() - r.mean()), "se_pt": 100 * se, "mean_rank": float(np.mean(ranks)),
            "p_rank": mannwhitneyu(s, r, alternative="greater").pvalue}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", type=Path, default=ROOT / "experiments/results/search_gpu1_s8k20/"
                   "search_vs_random_fashion_mnist.csv", help="a committed search_vs_random table (one point)")
    p.add_argument("--variant", default="train", help="the searched variant to retrain")
    p.add_argument("--searched", type=int, default=4, help="search seeds of the variant (the first N)")
    p.add_argument("--draws", type=int, default=20, help="random draws (the first N)")
    p.add_argument("--epochs", type=int, default=6, help="the longer retrain's epochs")
    add_run_args(p, "table what has finished, train nothing")
    a = p.parse_args(argv)
    rows = pd.read_csv(a.csv)
    if rows.target_ms.nunique() != 1 or rows.device.nunique() != 1:
        points = rows[["device", "target_ms"]].drop_duplicates().values.tolist()
        raise SystemExit(f"{a.csv}: expected one device and target, got {points}")
    point = f"{rows.device.iloc[0]}-{rows.target_ms.iloc[0]:g}ms"
    rows = picked(rows, a.variant, a.searched, a.draws)
    recipe = schedule_recipe(a.recipe.split(), a.epochs)
    paths = arch_files(rows, a.dataset, a.root / "exports" / f"schedule_vs_random-{point}")
    res = retrain_all([(path, 0) for path in paths], recipe, a)
    rows["top1_long"] = [r["top1"] if r else np.nan for r in res]
    done = rows.dropna(subset=["top1_long"])
    if done.kind.nunique() < 2 or min(done.kind.value_counts()) < 2:
        print(f"{len(done)} of {len(rows)} retrains finished: too few to compare yet", flush=True)
        return 1
    base = a.recipe.replace("train.epochs=2", "").strip()
    table = pd.DataFrame([{"retrain": "committed (2 epochs)", **verdict(done, "top1")},
                          {"retrain": f"{a.epochs} epochs", **verdict(done, "top1_long")}])
    tau = kendalltau(done.top1, done.top1_long)
    lines = [f"# Search vs random at {point}: 2 against {a.epochs} retrain epochs\n",
             f"The same networks retrained twice: `{a.variant}` exports of search seeds 0-{a.searched - 1} and "
             f"the first {a.draws} random draws of `{a.csv.parent.name}/{a.csv.name}` (tables of that run), "
             f"recipe `{base}` (stride-2 training stem, Fashion-MNIST test top-1, retrain seed 0) at 2 epochs "
             f"(the committed top-1) and at {a.epochs}. Finished: {len(done)} of {len(rows)} "
             f"({int((done.kind == 'searched').sum())} searched, {int((done.kind == 'random').sum())} random).\n",
             md_table(table, floatfmt="{:.4g}"),
             f"\nKendall tau between the two lengths' top-1 over these networks: {tau.statistic:.3f} "
             f"(p {tau.pvalue:.2g}). `mean_rank`: the searched exports' mean rank among the draws (1 is best); "
             "`p_rank`: one-sided rank-sum test, searched above random.\n"]
    report(a.out / f"schedule_vs_random_{point}", done, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
