"""Can the supernet's accuracy signal be trusted? ``python -m experiments.ranking``.

Kendall tau between two accuracies of the same architectures:

* **supernet**: held-out top-1 (the search's own held-out split) of the path pinned in a
  trained supernet, with the weights it inherits there;
* **retrained**: test top-1 after retraining it standalone with the benchmark's recipe.

Architectures: ``--k`` random draws in each band ``[0.9 T, T]`` for ``T`` in ``--bands`` on the
``--device`` table (the sampler of :mod:`search_spaces.sampling`), so they span the latency
range; the draws of the band also used by :mod:`experiments.search_vs_random` come out the same
and their retrains are shared (same folders). The supernet is a finished search run of
``experiments.search_vs_random`` (``--variant``, ``--point``, seed 0), searched first if needed.

Prints tau over all architectures and within each band, and writes
``ranking_<variant>.csv``/``.md``/``.png`` into ``--out``. Resumable like the benchmark.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from scipy.stats import kendalltau

from experiments.markdown import report
from experiments.search_vs_random import (
    add_run_args,
    parse_grid,
    random_archs,
    retrain_run,
    search_run,
)
from nas.checkpoint import load_checkpoint
from nas.data import make_loader
from nas.loops import DistInfo, evaluate, set_threads
from nas.search import build_state, prepare
from search_spaces.arch import Arch
from search_spaces.blocks import SKIP_OPS
from search_spaces.io import atomic_save_figure


class TrainedSupernet(NamedTuple):
    """A finished search's supernet (weights loaded), a loader over its held-out split and its layer
    scales' initial value: what :func:`supernet_scores` and :func:`block_effect` evaluate."""

    model: torch.nn.Module
    loader: torch.utils.data.DataLoader
    layer_scale_init: float


def load_supernet(run_dir: Path, eval_images: int | None = None) -> TrainedSupernet:
    """The supernet of the search run in ``run_dir`` with a loader over the first ``eval_images`` images
    of that search's held-out split (None: all of them)."""
    state = load_checkpoint(run_dir / "checkpoint.pt", kind="supernet")
    cfg = OmegaConf.create(state["config"])
    setup = prepare(cfg, DistInfo())
    st = build_state(cfg, setup)
    st.model.load_state_dict(state["model"])
    val = setup.val_part
    if eval_images is not None:
        val = torch.utils.data.Subset(val, range(min(eval_images, len(val))))
    return TrainedSupernet(st.model, make_loader(val, 256, False, 0), cfg.train.layer_scale_init)


def supernet_scores(supernet: TrainedSupernet, archs: list[Arch]) -> list[float]:
    """Held-out top-1 of each architecture's path in a finished search's supernet."""
    scores = []
    for arch in archs:
        supernet.model.pin(arch.choices)
        scores.append(evaluate(supernet.model, supernet.loader)["top1"])
    return scores


def block_effect(supernet: TrainedSupernet) -> pd.DataFrame:
    """How much the candidate blocks change the supernet's output at all: every layer pinned to one
    candidate in turn, held-out top-1 and the mean |logit change| from every layer pinned to identity,
    relative to the mean |logit| of that identity network; plus each candidate's mean layer-scale
    |gamma| over its initial value (1.0 = the blocks' layer scales never moved; NaN where a candidate
    has none). A path whose logits barely move cannot be told from its neighbours by the supernet."""
    model, loader = supernet.model, supernet.loader
    layers = [m.names for m in model.mixed_ops()]
    names = [n for n in layers[0] if all(n in x for x in layers)]  # candidates every layer offers
    skip = next((n for n in names if n in SKIP_OPS), None)
    if skip is None:
        raise ValueError(f"block_effect needs a skip candidate ({', '.join(SKIP_OPS)}) in every layer; "
                         f"the layers share only {names}")
    model.eval()

    def logits(op: str) -> torch.Tensor:
        model.pin([op] * len(model.mixed_ops()))
        with torch.no_grad():
            return torch.cat([model(x) for x, _ in loader])

    labels = torch.cat([y for _, y in loader])
    base = logits(skip)
    rows = []
    for op in names:
        out = base if op == skip else logits(op)
        gammas = [p.abs().mean().item() for m in model.mixed_ops()
                  for n, p in m.candidates[m.names.index(op)].named_parameters()
                  if n.split(".")[-1].startswith("gamma")]
        rows.append({"op": op, "top1": (out.argmax(1) == labels).float().mean().item(),
                     "logit_change": ((out - base).abs().mean() / base.abs().mean()).item(),
                     "gamma_over_init": (float(np.mean(gammas)) / supernet.layer_scale_init
                                         if gammas else float("nan"))})
    return pd.DataFrame(rows)


def tau(a, b) -> float:
    return float(kendalltau(a, b).statistic) if len(a) >= 3 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="vpu")
    p.add_argument("--bands", default="10ms,20ms,30ms,45ms,60ms", help="band tops T; each band is [0.9T, T]")
    p.add_argument("--k", type=int, default=3, help="draws per band")
    p.add_argument("--variant", default="default", help="search variant whose supernet is scored")
    p.add_argument("--search", default="", help="nas.search overrides of that variant (as in the benchmark)")
    p.add_argument("--point", default="vpu:30ms", help="which search of the variant (seed 0) holds the supernet")
    add_run_args(p, "tau over the finished retrains; run nothing")
    a = p.parse_args(argv)
    set_threads(1)
    recipe = shlex.split(a.recipe)
    bands = parse_grid(",".join(f"{a.device}:{t}" for t in a.bands.split(",")))
    (point,) = parse_grid(a.point)
    items = [(band, path) for band in bands
             for path in random_archs(band, a.k, a.dataset, a.root / "random" / a.dataset / band.tag)]
    variant_dir = a.root / "search" / a.dataset / a.variant
    run = not a.report_only
    with ThreadPoolExecutor(a.jobs) as pool:
        supernet = pool.submit(search_run, point, 0, variant_dir, shlex.split(a.search), a.dataset, run)
        retrained = list(pool.map(lambda it: retrain_run(it[1], 0, recipe, a.dataset, a.root, run), items))
        arch_path = supernet.result()
    if arch_path is None:
        print(f"error: no finished search in {variant_dir / point.tag / 'seed0'}", file=sys.stderr)
        return 1
    done = [(it, r) for it, r in zip(items, retrained) if r is not None]
    items, retrained = [it for it, _ in done], [r for _, r in done]
    archs = [Arch.load(path) for _, path in items]
    scores = supernet_scores(load_supernet(arch_path.parent), archs)
    rows = pd.DataFrame([{"band_top_ms": band.target_ms, "latency_ms": arch.metadata["random_draw"]["ms"],
                          "supernet_top1": s, "retrained_top1": r["top1"],
                          "choices": " ".join(c.replace("quadra_", "") for c in arch.choices)}
                         for (band, _), arch, s, r in zip(items, archs, scores, retrained)])
    overall = tau(rows.supernet_top1, rows.retrained_top1)
    per_band = {t: tau(g.supernet_top1, g.retrained_top1) for t, g in rows.groupby("band_top_ms")}
    lat_tau = tau(rows.latency_ms, rows.retrained_top1)
    md = [f"# Supernet ranking vs retrained ranking ({a.variant})\n",
          f"Supernet: `{arch_path.parent}` (search overrides: `{a.search or 'defaults'}`). Retrain recipe: "
          f"`{a.recipe}`. {len(rows)} architectures (of {a.k} per band [0.9T, T] on the {a.device} table, "
          f"bands {a.bands}; only finished retrains count).\n",
          f"- Kendall tau, supernet vs retrained top-1, all architectures: **{overall:.3f}**",
          f"- Kendall tau, latency vs retrained top-1 (what latency alone predicts): {lat_tau:.3f}",
          "- within each band: " + ", ".join(f"T={t:g} ms: {v:.2f}" for t, v in per_band.items()), "",
          "| band T ms | latency ms | supernet top-1 | retrained top-1 | choices |", "|---|---|---|---|---|"]
    md += [f"| {r.band_top_ms:g} | {r.latency_ms:.2f} | {r.supernet_top1:.4f} | {r.retrained_top1:.4f} | {r.choices} |"
           for r in rows.itertuples()]
    stem = a.out / f"ranking_{a.dataset}_{a.variant}"
    report(stem, rows, md)
    _plot(rows, overall, stem.with_suffix(".png"))
    return 0


def _plot(rows: pd.DataFrame, overall: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    sc = ax.scatter(rows.supernet_top1, rows.retrained_top1, c=rows.latency_ms, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="table latency (ms)")
    ax.set_xlabel("supernet held-out top-1 (inherited weights)")
    ax.set_ylabel("retrained test top-1")
    ax.set_title(f"Kendall tau {overall:.2f} over {len(rows)} architectures")
    lo, hi = np.nanmin(rows.retrained_top1), np.nanmax(rows.retrained_top1)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    fig.tight_layout()
    atomic_save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
