"""Does a latency band reward blocks in the high-resolution stages? ``python -m experiments.diagnostics.early_blocks``.

A prediction test for the search-quality issue. With 3 epochs on 60k images, the vpu 30 ms
architectures with blocks in the first two stages retrained better than those without, and the
searches put their blocks late. This benchmark checks that on architectures chosen before training:

1. draw ``--pool`` architectures in ``[0.9T, T]`` with the random baseline's distribution
   (:func:`search_spaces.sampling.sample_in_band`, seed ``--draw-seed``, so not the benchmark's draws);
2. count each one's blocks (non-identity layers) in the first ``--stages`` stages;
3. pair the one with the most such blocks with the one with the fewest, the runners-up with each other,
   and so on for ``--pairs`` pairs;
4. retrain every picked architecture with the :mod:`experiments.search_vs_random` recipe and run folders
   (``--recipe``, ``--seeds``); finished retrains are reused, so the command resumes.

Prints and writes ``early_blocks_<dataset>_<device>-<target>.csv``/``.md`` into ``--out``: per architecture
its count, table latency, params and top-1, and per pair the difference early - late.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from experiments.markdown import md_table, report
from experiments.search_vs_random import (
    BAND_LO,
    Point,
    add_run_args,
    draw_band,
    parse_grid,
    parse_seeds,
    retrain_all,
    space_cfg,
)
from search_spaces.arch import Arch
from search_spaces.blocks import SKIP_OPS
from search_spaces.spaces import SearchSpace


def early_blocks(space: SearchSpace, choices: tuple[str, ...], stages: int) -> int:
    """Blocks (non-skip choices) in the searchable layers of the first ``stages`` stages."""
    return sum(op not in SKIP_OPS for op, layer in zip(choices, space.layers()) if layer.stage < stages)


def pick_pairs(space: SearchSpace, pool: list[tuple[str, ...]], stages: int, pairs: int):
    """``[(early, late), ...]``: rank i of the pool sorted by early blocks, from the top and from the bottom
    (ties keep the draw order). Stops before the two ends meet or have equal counts."""
    def count(c):
        return early_blocks(space, c, stages)

    ascending, descending = sorted(pool, key=count), sorted(pool, key=count, reverse=True)  # both stable
    out = []
    for i in range(min(pairs, len(pool) // 2)):
        early, late = descending[i], ascending[i]
        if count(early) <= count(late):
            break
        out.append((early, late))
    return out


def draw_pairs(point: Point, a: argparse.Namespace) -> list[tuple[int, str, Path]]:
    """The picked architectures as files under the run root: ``[(pair, "early"|"late", path), ...]``."""
    band = draw_band(point, a.pool, a.draw_seed, a.dataset)
    space, table, train_space, scfg = band.space, band.table, band.train_space, space_cfg()
    # the picks depend on the pool and on how many stages count, so both name the folder
    out_dir = (a.root / "random" / a.dataset / point.tag
               / f"early_blocks_pool{a.pool}_seed{a.draw_seed}_stages{a.stages}")
    picked = []
    for i, pair in enumerate(pick_pairs(space, band.picks, a.stages, a.pairs)):
        for role, choices in zip(("early", "late"), pair):
            path = out_dir / f"{role}{i}.json"
            if not path.exists():
                meta = {"random_draw": {"device": point.device, "band_ms": [BAND_LO * point.target_ms, point.target_ms],
                                        "ms": table.arch_ms(space.arch(choices)), "predictor": table.predictor,
                                        "early_blocks": early_blocks(space, choices, a.stages),
                                        "distribution": f"pool of {a.pool} in-band draws (seed {a.draw_seed}), "
                                                        f"picked by blocks in the first {a.stages} stages"},
                        "config": {"search_space": scfg}}
                train_space.arch(choices, meta).save(path)
            picked.append((i, role, path))
    return picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--point", default="vpu:30ms", help="device:target of the band [0.9T, T]")
    p.add_argument("--pool", type=int, default=200, help="in-band draws to pick from")
    p.add_argument("--draw-seed", type=int, default=1, help="seed of the pool (the benchmark's draws use 0)")
    p.add_argument("--pairs", type=int, default=2, help="(most, fewest) early-block pairs to retrain")
    p.add_argument("--stages", type=int, default=2, help="how many leading stages count as early")
    p.add_argument("--seeds", default="0", help="retrain seeds of every picked architecture")
    add_run_args(p, "tables from finished retrains; run nothing")
    a = p.parse_args(argv)
    (point,) = parse_grid(a.point)
    seeds, recipe = parse_seeds(a.seeds), shlex.split(a.recipe)
    picked = draw_pairs(point, a)
    if not picked:
        print(f"error: the {a.pool} draws all have the same number of early blocks; nothing to compare",
              file=sys.stderr)
        return 1
    jobs = [(pair, role, path, seed) for pair, role, path in picked for seed in seeds]
    results = retrain_all([(path, seed) for *_, path, seed in jobs], recipe, a)
    rows = []
    for (pair, role, path, seed), res in zip(jobs, results):
        if res is None:
            continue
        arch = Arch.load(path)
        rows.append({"pair": pair, "role": role, "early_blocks": arch.metadata["random_draw"]["early_blocks"],
                     "seed": seed, "latency_ms": res["latency_ms"][point.device]["ms"], "params": res["params"],
                     "top1": res["top1"], "choices": " ".join(c.replace("quadra_", "") for c in arch.choices)})
    if not rows:
        print("no finished retrains yet", file=sys.stderr)
        return 1
    rows = pd.DataFrame(rows)
    per_arch = (rows.groupby(["pair", "role", "early_blocks", "latency_ms", "params", "choices"], sort=False)
                .top1.agg(["mean", "size"]).reset_index())
    wide = per_arch.pivot(index="pair", columns="role", values="mean")
    lines = [f"# Early blocks at {point.device} {point.target} ([0.9T, T])\n",
             f"Recipe: `{a.recipe}`, retrain seeds {a.seeds}. Pool: {a.pool} in-band draws (seed {a.draw_seed}); "
             f"early = blocks in the first {a.stages} stages; pair i = rank i from the top and from the bottom.\n"]
    for pair, r in wide.iterrows():
        if {"early", "late"} <= set(r.index) and r.notna().all():
            lines.append(f"- pair {pair}: early - late = **{100 * (r['early'] - r['late']):+.2f} pt**")
    lines += ["", md_table(per_arch.rename(columns={"mean": "top1_mean", "size": "n"}))]
    report(a.out / f"early_blocks_{a.dataset}_{point.tag}", rows, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
