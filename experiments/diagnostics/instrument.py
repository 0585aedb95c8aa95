"""Can a benchmark recipe see architecture quality? ``python -m experiments.diagnostics.instrument``.

A benchmark can only tell a search from random picks if the architectures of one latency band differ
by more than a retrain's seed noise, and if a band of twice the latency retrains measurably better. This
diagnostic measures both for one retrain recipe (``--recipe``, at training stem stride
``--train-stem-stride``), at each point of ``--grid``:

1. ``--k`` random draws in ``[0.9T, T]`` (:func:`experiments.search_vs_random.random_archs`: the
   benchmark's own draws and folders, the first K of every benchmark using the same band);
2. each retrained with every seed of ``--seeds`` (the shared retrain folders: nothing runs twice);
3. per point, the random-effects split of the top-1 spread
   (:func:`experiments.diagnostics.retrain_noise.variance_components`): architecture std with the seed
   noise removed, its 90% interval, and the seed std; their ratio against the goal (>= 2);
4. per device with targets T and 2T in the grid, the gap of the 2T band's mean over the T band's, its
   standard error (the draws' seed means over K, both bands) and the gap in seed stds (goal >= 3);
5. the median training seconds per epoch, and a 3-epoch retrain on all 60k images projected from it.

Writes ``instrument_<dataset>_<name>.csv`` (one row per retrain) and ``.md`` into ``--out``; ``--name``
defaults to ``stride<S>`` plus the recipe. Then ``instrument_<dataset>.{csv,md}``: every recipe measured into
``--out`` side by side with its goals (:func:`compare`), the failed ones included. Resumable: rerun the same
command; ``--report-only`` reads finished retrains only (a partial table says how many retrains it holds).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.diagnostics.retrain_noise import variance_components
from experiments.markdown import md_table, report
from experiments.search_vs_random import (
    DEFAULT_RECIPE,
    LEGACY_STEM_STRIDE,
    Point,
    add_run_args,
    parse_grid,
    parse_seeds,
    provenance_note,
    random_archs,
    retrain_all,
    space_cfg,
)
from search_spaces.arch import Arch

ARCH_TO_SEED_GOAL = 2.0  # architecture std >= 2 seed std at every grid point
GAP_GOAL = 3.0  # mean(2T band) - mean(T band) >= 3 seed std
FULL_TRAIN = 60_000  # Fashion-MNIST's training images: what "a 3-epoch retrain" means in the goals


def draws_dir(root: Path, dataset: str, point: Point, stride: int) -> Path:
    """The draws' folder: the benchmark's own at the first training stride, a ``stride<S>`` one otherwise."""
    base = root / "random" / dataset
    return (base if stride == LEGACY_STEM_STRIDE else base / f"stride{stride}") / point.tag


def default_name(stride: int, recipe: str) -> str:
    slug = "" if recipe == DEFAULT_RECIPE else "_" + re.sub(r"[^A-Za-z0-9_]+", "-", recipe).strip("-")
    return f"stride{stride}{slug}"


def point_stats(rows: pd.DataFrame) -> dict:
    """Variance components, band mean and timing of one point's retrains."""
    v = variance_components(rows)
    means = rows.groupby("arch").top1.mean()
    per_img = rows.train_s_per_epoch / rows.images_per_epoch
    return {"draws": int(means.size), "retrains": len(rows), "band_mean": float(means.mean()),
            "band_se": float(means.std(ddof=1) / np.sqrt(means.size)) if means.size > 1 else np.nan,
            "sigma_a": v["sigma_a"], "sigma_a_lo": v["sigma_a_lo"], "sigma_a_hi": v["sigma_a_hi"],
            "sigma_e": v["sigma_e"], "ratio": v["sigma_a"] / v["sigma_e"] if v["sigma_e"] > 0 else np.nan,
            "blocks": float(rows.groupby("arch").blocks.first().mean()),
            "s_per_epoch": float(rows.train_s_per_epoch.median()),
            "min_3ep_60k": float(per_img.median() * 3 * FULL_TRAIN / 60)}


GAP_COLUMNS = ["device", "T_ms", "mean_T", "mean_2T", "gap_pt", "gap_se_pt", "seed_std_pt", "gap_in_seed_std",
               "goal_met"]


def gaps(per_point: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Per device, each pair of grid targets T and 2T: the gap of the band means, its SE and seed stds."""
    out = []
    for device, g in per_point.groupby("device", sort=False):
        by_t = g.set_index("target_ms")
        for t in by_t.index:
            if 2 * t not in by_t.index:
                continue
            lo, hi = by_t.loc[t], by_t.loc[2 * t]
            pair = rows[(rows.device == device) & rows.target_ms.isin([t, 2 * t])]
            sigma_e = variance_components(pair)["sigma_e"]  # pooled over both bands
            gap = hi.band_mean - lo.band_mean
            out.append({"device": device, "T_ms": t, "mean_T": lo.band_mean, "mean_2T": hi.band_mean,
                        "gap_pt": 100 * gap, "gap_se_pt": 100 * float(np.hypot(lo.band_se, hi.band_se)),
                        "seed_std_pt": 100 * sigma_e, "gap_in_seed_std": gap / sigma_e if sigma_e > 0 else np.nan,
                        "goal_met": bool(gap >= GAP_GOAL * sigma_e)})
    return pd.DataFrame(out, columns=GAP_COLUMNS)


def lines_for(per_point: pd.DataFrame, gap_rows: pd.DataFrame, header: list[str]) -> list[str]:
    def pt(v: float) -> str:
        return "-" if np.isnan(v) else f"{100 * v:.2f}"

    lines = [*header, "", "| device | target ms | draws | retrains | blocks (mean) | band mean | arch std pt (90%) | "
             "seed std pt | arch / seed | goal >= 2 | s per epoch | 3 epochs on 60k, min |", "|" + "---|" * 12]
    for r in per_point.to_dict("records"):
        met = "-" if np.isnan(r["ratio"]) else ("yes" if r["ratio"] >= ARCH_TO_SEED_GOAL else "no")
        lines.append(f"| {r['device']} | {r['target_ms']:g} | {r['draws']} | {r['retrains']} | {r['blocks']:.1f} | "
                     f"{r['band_mean']:.4f} | {pt(r['sigma_a'])} ({pt(r['sigma_a_lo'])}-{pt(r['sigma_a_hi'])}) | "
                     f"{pt(r['sigma_e'])} | {r['ratio']:.2f} | {met} | {r['s_per_epoch']:.0f} | "
                     f"{r['min_3ep_60k']:.1f} |")
    if not gap_rows.empty:
        lines += ["", "Gap of the 2T band over the T band (SE: the draws' seed means over K, both bands):", "",
                  md_table(gap_rows.assign(goal_met=gap_rows.goal_met.map({True: "yes", False: "no"})),
                           floatfmt="{:.3f}")]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="vpu:30ms,vpu:60ms", help="device:target points; T and 2T pairs give gaps")
    p.add_argument("--k", type=int, default=8, help="random draws per point")
    p.add_argument("--seeds", default="0,1", help="retrain seeds of every draw")
    p.add_argument("--train-stem-stride", type=int, default=None,
                   help="stem stride at the training shape (default: the packaged search space's)")
    p.add_argument("--name", default=None, help="name of the recipe in the output files")
    add_run_args(p, "tables from finished retrains; run nothing")
    a = p.parse_args(argv)
    points, seeds = parse_grid(a.grid), parse_seeds(a.seeds)
    stride = a.train_stem_stride or space_cfg()["train_stem_stride"]
    recipe = shlex.split(a.recipe)
    # seed-major order: a session that stops early leaves every draw retrained once before any twice
    draws = {pt: random_archs(pt, a.k, a.dataset, draws_dir(a.root, a.dataset, pt, stride), stride) for pt in points}
    jobs = [(pt, i, path, seed) for seed in seeds for pt in points for i, path in enumerate(draws[pt])]
    results = retrain_all([(path, seed) for *_, path, seed in jobs], recipe, a)
    rows = []
    for (pt, i, path, seed), res in zip(jobs, results):
        if res is None:
            continue
        arch = Arch.load(path)
        limit = (res["config"].get("dataset") or {}).get("limit")
        rows.append({"device": pt.device, "target_ms": pt.target_ms, "draw": i, "seed": seed, "top1": res["top1"],
                     "latency_ms": res["latency_ms"][pt.device]["ms"],
                     "predictor": res["latency_ms"][pt.device]["predictor"],
                     "blocks": sum(c != "identity" for c in arch.choices), "stem_stride": arch.macro.stem_stride,
                     "train_s_per_epoch": res["train_time_s"] / res["epochs"],
                     "images_per_epoch": min(limit or FULL_TRAIN, FULL_TRAIN) if a.dataset == "fashion_mnist"
                     else np.nan,  # the 60k projection is Fashion-MNIST's
                     "recipe": a.recipe, "arch": " ".join(c.replace("quadra_", "") for c in arch.choices)})
    if not rows:
        print("no finished retrains yet", file=sys.stderr)
        return 1
    rows = pd.DataFrame(rows)
    per_point = pd.DataFrame([{"device": d, "target_ms": t, **point_stats(g)}
                              for (d, t), g in rows.groupby(["device", "target_ms"], sort=False)])
    planned = len(jobs)
    predictors = ", ".join(f"{d}: `{p}`" for d, p in rows[["device", "predictor"]].drop_duplicates().itertuples(False))
    header = [f"# Can the recipe see architecture quality? `{a.name or default_name(stride, a.recipe)}`\n",
              f"Recipe: `{a.recipe}` at training stem stride {stride}, on {a.dataset}; {a.k} random draws in "
              f"[0.9T, T] per point x retrain seeds {a.seeds}. {len(rows)} of {planned} planned retrains finished."
              f" Latency: the table of each device's predictor ({predictors}). {provenance_note(rows['predictor'])}"
              f" Goals: architecture std >= {ARCH_TO_SEED_GOAL:g}x seed std, "
              f"2T - T gap >= {GAP_GOAL:g} seed std."]
    report(a.out / f"instrument_{a.dataset}_{a.name or default_name(stride, a.recipe)}", rows,
           lines_for(per_point, gaps(per_point, rows), header))
    compare(a.out, a.dataset)
    return 0 if len(rows) == planned else 1


def compare(out: Path, dataset: str) -> pd.DataFrame:
    """Every recipe measured into ``out`` side by side, one row per (recipe, point), with the goals:
    ``instrument_<dataset>.{csv,md}``. The recipes that fail stay in the table."""
    table = []
    for path in sorted(out.glob(f"instrument_{dataset}_*.csv")):
        rows = pd.read_csv(path)
        per_point = pd.DataFrame([{"device": d, "target_ms": t, **point_stats(g)}
                                  for (d, t), g in rows.groupby(["device", "target_ms"], sort=False)])
        gap = gaps(per_point, rows).set_index(["device", "T_ms"])
        for r in per_point.to_dict("records"):
            g = gap.loc[(r["device"], r["target_ms"])] if (r["device"], r["target_ms"]) in gap.index else None
            table.append({"recipe": path.stem.removeprefix(f"instrument_{dataset}_"),
                          "stem_stride": int(rows.stem_stride.iloc[0]), "device": r["device"],
                          "target_ms": r["target_ms"], "draws": r["draws"], "retrains": r["retrains"],
                          "arch_std_pt": 100 * r["sigma_a"], "seed_std_pt": 100 * r["sigma_e"],
                          "arch_over_seed": r["ratio"], "gap_to_2T_pt": np.nan if g is None else g.gap_pt,
                          "gap_se_pt": np.nan if g is None else g.gap_se_pt,
                          "gap_in_seed_std": np.nan if g is None else g.gap_in_seed_std,
                          "min_3ep_60k": r["min_3ep_60k"],
                          "goals_met": _goals(r["ratio"], None if g is None else g.gap_in_seed_std)})
    table = pd.DataFrame(table)
    if not table.empty:
        report(out / f"instrument_{dataset}", table,
               ["# Which recipe can see architecture quality? Every measured recipe side by side\n",
                f"From `instrument_{dataset}_<recipe>.csv` (`python -m experiments.diagnostics.instrument`). Goals: "
                f"arch / seed >= {ARCH_TO_SEED_GOAL:g} at every point, gap to the 2T band >= {GAP_GOAL:g} seed std, "
                "a 3-epoch retrain on 60k images <= 12 min on one thread.\n", md_table(table, floatfmt="{:.3g}")])
    return table


def _goals(ratio: float, gap_in_seed_std: float | None) -> str:
    if np.isnan(ratio):
        return "needs repeated seeds"
    spread = "spread yes" if ratio >= ARCH_TO_SEED_GOAL else "spread no"
    if gap_in_seed_std is None:
        return spread
    return f"{spread}, gap {'yes' if gap_in_seed_std >= GAP_GOAL else 'no'}"


if __name__ == "__main__":
    sys.exit(main())
