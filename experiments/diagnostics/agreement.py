"""Do two search seeds' supernets agree inside one latency band? ``python -m experiments.diagnostics.agreement``.

The select derivation picks, among architectures of one latency band, the one the supernet scores
best. That only helps if the supernet's in-band scores say something about the architectures
rather than about one training run. This diagnostic needs no retraining:

1. ``--pool`` architectures are drawn in the band ``[0.9 T, T]`` of ``--point`` with the random
   baseline's sampler (:func:`search_spaces.sampling.sample_in_band`, seed ``--draw-seed``; the
   benchmark's draws use seed 0, :mod:`experiments.diagnostics.early_blocks` seed 1, so ``--draw-seed 1``
   scores its pool);
2. every architecture is pinned in the finished supernet of each search seed of ``--variant``
   (searched first if missing, as in :mod:`experiments.search_vs_random`) and scored on that
   search's held-out split with the inherited weights (:func:`experiments.ranking.supernet_scores`);
3. it reports Kendall tau between the seeds' scores, the spread of the scores, and how many of one
   seed's top 10% are in the other's;
4. and, per seed, how much the candidate blocks move the supernet's output at all
   (:func:`experiments.ranking.block_effect`: every layer pinned to one candidate, top-1 and logit
   change against every layer pinned to identity, layer scales against their initial value).

A tau near 0 means that inside the band the supernet ranks by run-to-run noise, and selecting by
its scores is a random pick. Each seed's scores are cached in its search folder
(``agreement_pool<N>_seed<S>.csv``), so a rerun scores nothing twice. Writes
``agreement_<dataset>_<variant>_<point>.csv``/``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from experiments.diagnostics.early_blocks import early_blocks
from experiments.markdown import report
from experiments.ranking import TrainedSupernet, block_effect, load_supernet, supernet_scores, tau
from experiments.search_vs_random import (
    BAND_LO,
    ROOT,
    add_folder_args,
    draw_band,
    parse_grid,
    parse_seeds,
    search_run,
)
from nas.loops import set_threads
from search_spaces.blocks import SKIP_OPS
from search_spaces.io import atomic_write_text

TOP_FRACTION = 0.1  # "top" for the overlap count: the best 10% of the pool by one seed's scores


def cached_scores(supernet: TrainedSupernet, run_dir: Path, archs, key: str) -> list[float]:
    """Scores of ``archs`` in the supernet loaded from ``run_dir``, read from / written to ``<key>.csv``
    there."""
    cache = run_dir / f"{key}.csv"
    choices = [" ".join(a.choices) for a in archs]
    if cache.exists():
        old = pd.read_csv(cache)
        if list(old.choices) == choices:
            return old.supernet_top1.tolist()
    scores = supernet_scores(supernet, archs)
    atomic_write_text(cache, pd.DataFrame({"choices": choices, "supernet_top1": scores}).to_csv(index=False))
    return scores


def score_run(run_dir: Path, archs, key: str, eval_images: int | None) -> tuple[list[float], pd.DataFrame]:
    """One search seed's scores of ``archs`` (:func:`cached_scores`) and its block effect, both on the first
    ``eval_images`` images of its held-out split (None: all)."""
    supernet = load_supernet(run_dir, eval_images)
    return cached_scores(supernet, run_dir, archs, key), block_effect(supernet)


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it (tables are committed)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def top_overlap(a: pd.Series, b: pd.Series, fraction: float = TOP_FRACTION) -> tuple[int, int]:
    """(how many of ``a``'s top ``fraction`` are also in ``b``'s, how many that is)."""
    k = max(1, round(fraction * len(a)))
    return len(set(a.nlargest(k).index) & set(b.nlargest(k).index)), k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--point", default="vpu:30ms", help="device:target of the band [0.9T, T] and of the searches")
    p.add_argument("--variant", default="default", help="search variant whose supernets are compared")
    p.add_argument("--search", default="", help="nas.search overrides of that variant (as in the benchmark)")
    p.add_argument("--seeds", default="0,1", help="search seeds whose supernets are compared (at least 2)")
    p.add_argument("--pool", type=int, default=200, help="in-band architectures scored")
    p.add_argument("--draw-seed", type=int, default=1, help="seed of the pool (early_blocks uses 1)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="score on the first N held-out images of each search (default: all of them)")
    add_folder_args(p)
    p.add_argument("--jobs", type=int, default=2, help="searches and scorings side by side (1 thread each)")
    p.add_argument("--report-only", action="store_true", help="tables from finished searches; search nothing")
    a = p.parse_args(argv)
    try:
        seeds = parse_seeds(a.seeds)
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: expected comma-separated integers, e.g. 0,1")
    if len(set(seeds)) < 2:
        p.error(f"--seeds {a.seeds}: agreement needs at least two different search seeds")
    set_threads(1)
    (point,) = parse_grid(a.point)
    variant_dir = a.root / "search" / a.dataset / a.variant
    with ThreadPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(lambda s: search_run(point, s, variant_dir, shlex.split(a.search), a.dataset,
                                                  not a.report_only), seeds))
    missing = [s for s, r in zip(seeds, runs) if r is None]
    if missing:
        print(f"error: no finished search for seed(s) {missing} in {variant_dir / point.tag}", file=sys.stderr)
        return 1
    band = draw_band(point, a.pool, a.draw_seed, a.dataset)
    archs = [band.train_space.arch(c) for c in band.picks]
    ms = [band.table.arch_ms(band.space.arch(c)) for c in band.picks]
    key = f"agreement_pool{a.pool}_seed{a.draw_seed}" + (f"_images{a.eval_images}" if a.eval_images else "")
    rows = pd.DataFrame({"latency_ms": ms, "blocks": [sum(op not in SKIP_OPS for op in x.choices) for x in archs],
                         "early_blocks": [early_blocks(band.space, x.choices, 2) for x in archs]})
    with ThreadPoolExecutor(a.jobs) as pool:  # torch releases the GIL: one scoring thread per core
        scores, effects = zip(*pool.map(lambda run: score_run(run.parent, archs, key, a.eval_images), runs))
    for s, col in zip(seeds, scores):
        rows[f"seed{s}"] = col
    rows["choices"] = [" ".join(c.replace("quadra_", "") for c in x.choices) for x in archs]
    cols = [f"seed{s}" for s in seeds]
    md = [f"# Do search seeds' supernets agree in the {point.tag} band? ({a.variant})\n",
          f"{len(rows)} architectures drawn in [{BAND_LO * point.target_ms:g}, {point.target_ms:g}] ms on the "
          f"{point.device} table (pool seed {a.draw_seed}), each scored with the inherited weights of the "
          f"supernets in `{_shown(variant_dir / point.tag)}` (search overrides: `{a.search or 'defaults'}`) on that "
          f"search's held-out split ({f'first {a.eval_images} images' if a.eval_images else 'all of it'}).\n",
          "| seeds | Kendall tau | top-10% overlap |", "|---|---|---|"]
    for x, y in itertools.combinations(cols, 2):
        hit, k = top_overlap(rows[x], rows[y])
        md.append(f"| {x} vs {y} | **{tau(rows[x], rows[y]):.3f}** | {hit} of {k} |")
    md += ["", "| seed | mean score | std | min | max | tau vs blocks in stages 0-1 | tau vs blocks |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {c} | {rows[c].mean():.4f} | {rows[c].std():.4f} | {rows[c].min():.4f} | {rows[c].max():.4f} | "
           f"{tau(rows[c], rows.early_blocks):.3f} | {tau(rows[c], rows.blocks):.3f} |" for c in cols]
    md += ["", "Block effect: every layer pinned to one candidate; top-1 on the same held-out images, mean |logit "
           "change| from the all-identity network relative to its mean |logit|, and the candidates' layer scales "
           "|gamma| over their initial value.", ""]
    md += ["| seed | " + " | ".join(effects[0].op) + " |", "|---" * (len(effects[0]) + 1) + "|"]
    for s, e in zip(seeds, effects):
        md += [f"| seed{s} top-1 | " + " | ".join(f"{v:.4f}" for v in e.top1) + " |",
               f"| seed{s} logit change | " + " | ".join(f"{v:.3f}" for v in e.logit_change) + " |",
               f"| seed{s} gamma / init | " + " | ".join(f"{v:.3f}" for v in e.gamma_over_init) + " |"]
    report(a.out / f"agreement_{a.dataset}_{a.variant}_{point.tag}", rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
