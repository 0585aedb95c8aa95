"""Which supernet serves many targets? ``python -m experiments.supernet_recipes``.

A supernet meant for ``nas.derive`` at many devices and targets must rank the architectures of every band, not
only the one it was searched for. For each recipe (``--recipes``: values of ``train.sampling``), one search per
seed at the main command's point (vpu 30 ms, ``derive.method=select``: its export is not what is judged) trains
a supernet. Its shared weights then score architectures whose retrained top-1 is committed: the random draws of
the instrument points (``--pool``: vpu 15, gpu 0.5, gpu 1 and cpu 15 ms, 20 each, retrained with the
benchmark recipe, a stride-2 stem and 2 epochs on 30k images). Reported per recipe: Kendall tau between the
supernet's held-out top-1 and the retrained top-1 within each point (the ranking a derivation at that target
relies on), their mean, and tau over the whole pool (across targets, where size alone ranks much).

Writes ``supernet_recipes.{csv,md}`` into ``--out``; searches resume from their folders (``--root``) and each
supernet's scores are kept beside it (``recipe_scores.csv``), so a rerun only reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.markdown import md_table, report
from experiments.ranking import load_supernet, supernet_scores, tau
from experiments.search_vs_random import ROOT, add_folder_args, full_choices, parse_grid, search_run
from nas.loops import set_threads
from search_spaces.arch import Arch

RECIPES = ("band", "uniform", "ladder", "sandwich")
POOL = ",".join(str(ROOT / "experiments" / "results" / f"search_{p}_s8k20" / "search_vs_random_fashion_mnist.csv")
                for p in ("vpu15", "gpu05", "gpu1", "cpu15"))
SCORES = "recipe_scores.csv"


def pool_rows(paths: list[Path]) -> pd.DataFrame:
    """The random draws of each committed point: device, target, choices (full names) and retrained top-1."""
    rows = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    rows = rows[rows.kind == "random"].copy()
    rows["choices"] = [" ".join(full_choices(ch)) for ch in rows.choices]
    rows["point"] = [f"{d} {t:g} ms" for d, t in zip(rows.device, rows.target_ms)]
    return rows[["point", "device", "target_ms", "choices", "top1"]].reset_index(drop=True)


def scores(run_dir: Path, pool: pd.DataFrame, eval_images: int | None) -> list[float]:
    """Held-out top-1 of each pool architecture in the supernet of ``run_dir`` (kept in :data:`SCORES`)."""
    path = run_dir / SCORES
    if path.exists():
        kept = dict(zip(*pd.read_csv(path)[["choices", "supernet_top1"]].T.values))
        if all(c in kept for c in pool.choices):
            return [kept[c] for c in pool.choices]
    supernet = load_supernet(run_dir, eval_images)
    space = supernet.model.space
    out = supernet_scores(supernet, [space.arch(c.split()) for c in pool.choices])
    pd.DataFrame({"choices": pool.choices, "supernet_top1": out}).to_csv(path, index=False)
    return out


def recipe_row(recipe: str, seed: int, pool: pd.DataFrame, score: list[float], wall_s: float) -> dict:
    scored = pool.assign(supernet_top1=score)
    per_point = {p: tau(g.supernet_top1, g.top1) for p, g in scored.groupby("point", sort=False)}
    return {"recipe": recipe, "seed": seed, **{f"tau {p}": v for p, v in per_point.items()},
            "tau_mean_within": float(np.mean(list(per_point.values()))),
            "tau_all": tau(scored.supernet_top1, scored.top1), "search_s": wall_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES), help="train.sampling values to compare")
    p.add_argument("--seeds", default="0", help="search seeds per recipe")
    p.add_argument("--point", default="vpu:30ms", help="the searches' device and target")
    p.add_argument("--search", default="derive.method=select", help="nas.search overrides of every search")
    p.add_argument("--pool", default=POOL, help="committed search_vs_random CSVs whose random draws are scored")
    p.add_argument("--eval-images", type=int, default=None, help="held-out images per score (default: all)")
    p.add_argument("--report-only", action="store_true", help="report finished searches, run none")
    add_folder_args(p)
    a = p.parse_args(argv)
    set_threads(1)
    (point,) = parse_grid(a.point)
    pool = pool_rows([Path(x) for x in a.pool.split(",")])
    rows = []
    for recipe in a.recipes.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            folder = a.root / "search" / a.dataset / f"recipe_{recipe}"
            arch = search_run(point, seed, folder, [f"train.sampling={recipe}", *a.search.split()], a.dataset,
                              not a.report_only)
            if arch is None:
                continue
            wall = float(Arch.load(arch).metadata.get("search", {}).get("wall_s", np.nan))
            rows.append(recipe_row(recipe, seed, pool, scores(arch.parent, pool, a.eval_images), wall))
            print(json.dumps(rows[-1]), flush=True)
    if not rows:
        print("no finished searches yet", flush=True)
        return 1
    table = pd.DataFrame(rows)
    lines = ["# Which supernet serves many targets: Kendall tau of its scores against retrained top-1\n",
             f"Supernets: one search per recipe and seed at {point.device} {point.target} (`train.sampling=RECIPE "
             f"{a.search}`, the default search otherwise: 20k Fashion-MNIST images, 1 warm-up + 3 epochs, 1 "
             f"thread). Pool: the committed random draws of {pool.point.nunique()} instrument points "
             f"({len(pool)} architectures, {', '.join(pool.point.unique())}), retrained with the benchmark recipe "
             "(stride-2 stem, 2 epochs on 30k images); each scored by the supernet on its search's held-out split. "
             "`tau POINT`: within that point's 20 draws (the ranking a derivation there relies on; the SE of one "
             "such tau is about 0.16); `tau_all`: over the whole pool. One seed per recipe is a lead, not a "
             "finding.\n", md_table(table, floatfmt="{:.3g}")]
    report(a.out / "supernet_recipes", table, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
