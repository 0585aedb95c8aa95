"""Do training-free scores rank a latency band? ``python -m experiments.diagnostics.proxy_tau``.

Reads every finished retrain of one recipe (the folders :mod:`experiments.search_vs_random`,
:mod:`experiments.diagnostics.early_blocks`, :mod:`experiments.diagnostics.retrain_noise` and
:mod:`experiments.ranking` share
under ``--root``), averages each architecture's test top-1 over its retrain seeds and, for each
point of ``--grid``, keeps the architectures whose table latency on that device lies in the band
``[0.9 T, T]``. Over those it prints Kendall tau between the retrained top-1 and:

* ``naswot``: the NASWOT score (:mod:`search_spaces.naswot`) of the network at initialisation
  (``--init-seed``) on the first ``--batch`` training images; what ``derive.method=naswot`` ranks by;
* ``-params`` (fewer is better) and ``macs`` (at the training shape), two zero-cost baselines;
* ``early``: blocks in the first two stages (the signal :mod:`experiments.diagnostics.early_blocks` measured);
* ``train acc epN``: the retrain's own training accuracy over its epoch N, for every epoch but the
  last (from its ``history.csv``; mean over seeds): what a selector would see that trains every
  candidate for the first N epochs of the recipe and stops. It comes from the same runs as the top-1
  it is compared with, so their shared seed noise flatters its tau;
* with ``--proxy-recipe RECIPE``, ``recipe RECIPE``: the architecture's top-1 under that other (cheaper)
  recipe, mean over its seeds, over the architectures retrained with both: does the cheaper
  benchmark rank the band like this one;

with ``--supernet VARIANT``, also against ``supernet``: held-out top-1 of each architecture's path in
the finished supernet of that search variant at the point (search seed ``--search-seed``; what
``derive.method=select`` ranks by, :func:`experiments.ranking.supernet_scores`), plus that supernet's
block effect per point (:func:`experiments.ranking.block_effect`: do its blocks move its output at
all); the tables are then named ``proxy_tau_<dataset>_<variant>``. And, as ``naswot stability``, tau
between two NASWOT scores of the same networks (another batch and init seed): how much of NASWOT's
order is the score's own noise. A second table (:func:`cross_seed`) ranks each band across retrain
seeds, so that no seed noise is shared: seed 0's top-1 and training accuracy per epoch against seed
1's top-1.

No training happens: it takes seconds (a supernet scores on its held-out split: minutes). Writes
``proxy_tau_<dataset>.csv`` (one row per architecture and point) and ``.md`` (tau per point) into
``--out``. The architectures were not drawn for this test (random draws, early/late pairs, search
exports), so tau is over whatever has been retrained.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch

from experiments.diagnostics.early_blocks import early_blocks
from experiments.diagnostics.retrain_noise import seed_tau
from experiments.markdown import md_table, report
from experiments.ranking import block_effect, load_supernet, supernet_scores, tau
from experiments.search_vs_random import BAND_LO, add_folder_args, band_setting, parse_grid, recipe_dir
from nas.data import get_dataset
from nas.loops import set_threads
from nas.trainer import HISTORY
from search_spaces.naswot import naswot_scores


def runs(folder: Path) -> pd.DataFrame:
    """One row per finished retrain of a quadra architecture in ``folder``: choices, seed, test top-1,
    params and MACs at the training shape, and ``train_acc_ep<N>`` for every epoch of its
    ``history.csv`` but the last."""
    rows = []
    for path in sorted(folder.glob("*/results.json")):
        r = json.loads(path.read_text())
        if r.get("space") == "quadra" and r.get("top1") is not None:
            hist = path.parent / HISTORY
            accs = pd.read_csv(hist).train_acc.tolist() if hist.exists() else []
            rows.append({"choices": " ".join(r["choices"]), "seed": r["config"]["seed"], "top1": r["top1"],
                         "params": r["params"], "macs": r["macs"],
                         **{f"train_acc_ep{n}": acc for n, acc in enumerate(accs[:-1], 1)}})
    return pd.DataFrame(rows, columns=None if rows else ["choices", "seed", "top1", "params", "macs"])


def retrained(per_run: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture of :func:`runs`: mean top-1 over seeds, seeds, params, MACs and
    ``train_acc_ep<N>`` (mean over seeds)."""
    if per_run.empty:
        return pd.DataFrame(columns=["choices", "top1", "seeds", "params", "macs"])
    epochs = {c: (c, "mean") for c in per_run.columns if c.startswith("train_acc_ep")}
    return (per_run.groupby("choices", sort=True)
                   .agg(top1=("top1", "mean"), seeds=("top1", "size"), params=("params", "first"),
                        macs=("macs", "first"), **epochs).reset_index())


def cross_seed(per_run: pd.DataFrame, first: int = 0, second: int = 1) -> dict[str, float]:
    """Over the architectures retrained with both seeds (:func:`experiments.diagnostics.retrain_noise.seed_tau`):
    Kendall tau between seed ``second``'s top-1 and (a) seed ``first``'s top-1, (b) seed ``first``'s
    training accuracy over each epoch but the last (NaN under three architectures). Unlike ``train acc
    epN`` of the main table, no seed noise is shared: (b) is what a selector that trains each candidate
    for N epochs would achieve against an independent retrain, and (a) the same for a selector that
    retrains each candidate fully once."""
    both = per_run[(per_run.seed == first) & per_run.choices.isin(per_run.choices[per_run.seed == second])]
    scores = {"top1": "top1", **{f"train acc ep{c.removeprefix('train_acc_ep')}": c for c in epoch_columns(both)}}
    return {"archs": len(both), **{f"tau {name} s{first}": seed_tau(per_run, (first, second), col, "choices")[0]
                                   for name, col in scores.items()}}


def paired_tau(a: pd.Series, b: pd.Series) -> float:
    """:func:`experiments.ranking.tau` over the rows where both are known."""
    known = a.notna() & b.notna()
    return tau(a[known], b[known])


def epoch_columns(df: pd.DataFrame) -> list[str]:
    """The ``train_acc_ep<N>`` columns known for every row of ``df``, by epoch."""
    cols = [c for c in df.columns if c.startswith("train_acc_ep") and df[c].notna().all()]
    return sorted(cols, key=lambda c: int(c.removeprefix("train_acc_ep")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="vpu:30ms,cpu:30ms,gpu:1ms", help="bands [0.9T, T] as device:target")
    p.add_argument("--recipe", default="train.epochs=3", help="the retrains' nas.retrain overrides (as given to "
                   "the benchmarks)")
    add_folder_args(p)
    p.add_argument("--batch", type=int, default=64, help="images per NASWOT code kernel")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the networks' initialisation")
    p.add_argument("--supernet", default=None, metavar="VARIANT",
                   help="also score by this search variant's supernet at each point (seed --search-seed)")
    p.add_argument("--search-seed", type=int, default=0, help="the search seed of --supernet")
    p.add_argument("--proxy-recipe", default=None, metavar="RECIPE",
                   help="also rank by each architecture's top-1 under this other recipe (e.g. train.epochs=3)")
    a = p.parse_args(argv)
    if a.batch < 2:
        p.error(f"--batch {a.batch}: NASWOT needs at least 2 images")
    set_threads(1)
    folder = recipe_dir(a.root, a.dataset, shlex.split(a.recipe))
    per_run = runs(folder)
    archs = retrained(per_run)
    if archs.empty:
        print(f"error: no finished retrain of recipe {a.recipe!r} in {folder}", file=sys.stderr)
        return 1
    proxy = (retrained(runs(recipe_dir(a.root, a.dataset, shlex.split(a.proxy_recipe)))).set_index("choices").top1
             if a.proxy_recipe else None)
    data, _ = get_dataset(a.dataset, "train", limit=2 * a.batch)
    batches = [torch.stack([data[i][0] for i in range(j * len(data) // 2, (j + 1) * len(data) // 2)]) for j in (0, 1)]
    images = batches[0]
    rows, summary, crossed, effects = [], [], [], []
    for point in parse_grid(a.grid):
        band = band_setting(point, a.dataset)
        ms = [band.table.arch_ms(band.space.arch(c.split())) for c in archs.choices]
        lo, hi = BAND_LO * point.target_ms, point.target_ms
        inside = archs[[lo <= m <= hi for m in ms]].assign(latency_ms=[m for m in ms if lo <= m <= hi])
        if inside.empty:
            continue
        run = a.root / "search" / a.dataset / a.supernet / point.tag / f"seed{a.search_seed}" if a.supernet else None
        if run is not None and not (run / "checkpoint.pt").exists():
            print(f"note: no supernet in {run}; {point.tag} skipped", file=sys.stderr)
            continue
        choices = [tuple(c.split()) for c in inside.choices]
        nets = [band.train_space.arch(c) for c in choices]
        inside = inside.assign(point=point.tag, naswot=naswot_scores(nets, images, a.init_seed),
                               naswot_other=naswot_scores(nets, batches[1], a.init_seed + 1),
                               early=[early_blocks(band.space, c, 2) for c in choices])
        signed = {"naswot": inside.naswot, "-params": -inside.params, "macs": inside.macs, "early": inside.early}
        signed |= {f"train acc ep{c.removeprefix('train_acc_ep')}": inside[c] for c in epoch_columns(inside)}
        if proxy is not None:
            inside = inside.assign(proxy_recipe_top1=inside.choices.map(proxy))
            signed[f"recipe {a.proxy_recipe}"] = inside.proxy_recipe_top1
        if a.supernet:
            supernet = load_supernet(run)
            inside = inside.assign(supernet=supernet_scores(supernet, nets))
            signed["supernet"] = inside.supernet
            effects.append(f"\n## Block effect in the supernet at {point.tag}\n\n"
                           + md_table(block_effect(supernet).round(4)))
        rows.append(inside)
        spread = {"top1 std pt": round(100 * inside.top1.std(), 3)}
        if proxy is not None:  # both recipes' spread over the architectures retrained with both
            both = inside[inside.proxy_recipe_top1.notna()]
            spread |= {"archs in recipe": len(both), "top1 std pt, those": round(100 * both.top1.std(), 3),
                       "recipe top1 std pt": round(100 * both.proxy_recipe_top1.std(), 3)}
        summary.append({"point": point.tag, "predictor": band.table.predictor, "archs": len(inside), **spread,
                        **{f"tau {s}": round(paired_tau(inside.top1, signed[s]), 3) for s in signed},
                        "naswot stability": round(tau(inside.naswot, inside.naswot_other), 3)})
        crossed.append({"point": point.tag, **cross_seed(per_run[per_run.choices.isin(inside.choices)])})
    if not rows:
        print(f"error: none of the {len(archs)} retrained architectures lies in a band of {a.grid}", file=sys.stderr)
        return 1
    table = pd.concat(rows, ignore_index=True)
    table = table[["point", "choices", "latency_ms", "top1", "seeds", "naswot", "naswot_other", "params", "macs",
                   "early", *epoch_columns(table), *(["proxy_recipe_top1"] if proxy is not None else []),
                   *(["supernet"] if a.supernet else [])]]
    lines = [f"# Training-free scores vs retrained top-1 ({a.dataset}, recipe `{a.recipe}`)", "",
             f"Kendall tau per band [{BAND_LO} T, T] over the retrained architectures in it (top-1: mean over "
             f"retrain seeds). NASWOT on {len(images)} training images, init seed {a.init_seed}; `naswot stability`: "
             f"tau between that score and one on the next {len(batches[1])} images with init seed {a.init_seed + 1}. "
             "Latencies are table sums of the predictor named per band. `top1 std pt`: the spread of the retrained "
             "top-1 (seed noise included)."
             + (f" `recipe {a.proxy_recipe}`: top-1 under that recipe (mean over its seeds) over the `archs in recipe`"
                " retrained with both." if a.proxy_recipe else "")
             + (f" `supernet`: held-out top-1 with the inherited weights of the `{a.supernet}` supernet, search seed "
                f"{a.search_seed}." if a.supernet else ""), "",
             md_table(pd.DataFrame(summary)), "",
             "Across retrain seeds, over the architectures of each band retrained with seeds 0 and 1: Kendall tau "
             "between seed 1's top-1 and seed 0's top-1 (`tau top1 s0`: a selector that retrains every candidate "
             "once) or seed 0's training accuracy over epoch N (`tau train acc epN s0`: one that trains them for N "
             "epochs). No seed noise is shared here.", "",
             md_table(pd.DataFrame(crossed).round(3).astype(object).fillna("-"))]
    if effects:  # how much the candidate blocks move that supernet at all (experiments.ranking.block_effect)
        lines += ["", "Block effect: every layer pinned to one candidate; held-out top-1, mean |logit change| from "
                  "the all-identity network relative to its mean |logit|, and the candidates' layer scales over "
                  "their initial value.", *effects]
    report(a.out / "_".join(filter(None, ["proxy_tau", a.dataset, a.supernet])), table, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
