"""Is every budget met *and used*? ``python -m experiments.budget_grid``.

Runs one search per (device, target) of the grid vpu {10, 30, 60} ms, cpu {10, 30, 60} ms,
gpu {0.5, 1, 2} ms and tabulates exported latency / target on the search device's table
(the goal: within [0.90, 1.00] everywhere, an all-identity export only when nothing else fits).
Each search is its own run folder under ``--root`` (skipped when its ``arch.json`` exists).
The default search is short (``--search``, digits): the band is a property of the derivation,
not of how long the supernet trained. Writes ``budget_grid.{csv,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from experiments.search_vs_random import ROOT, parse_grid, search_run
from search_spaces.arch import Arch
from search_spaces.io import atomic_write_text

GRID = "vpu:10ms,vpu:30ms,vpu:60ms,cpu:10ms,cpu:30ms,cpu:60ms,gpu:0.5ms,gpu:1ms,gpu:2ms"
SHORT = "train.warmup_epochs=0 train.epochs=1 train.batch_size=64 dataset.limit=800 log_devices=[cpu,vpu,gpu]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default=GRID)
    p.add_argument("--search", default=SHORT, help="nas.search overrides (recipe defaults otherwise)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--root", type=Path, default=ROOT / "experiments" / "runs" / "budget_grid")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    a = p.parse_args(argv)
    points = parse_grid(a.grid)
    overrides = shlex.split(a.search)
    with ThreadPoolExecutor(a.jobs) as pool:
        paths = list(pool.map(lambda pt: search_run(pt, 0, a.root / a.dataset, overrides, a.dataset), points))
    rows = []
    for point, path in zip(points, paths):
        m = Arch.load(path).metadata
        ms = m["latency_ms"][point.device]["ms"]
        blocks = sum(c != "identity" for c in Arch.load(path).choices)
        rows.append({"device": point.device, "target_ms": point.target_ms, "exported_ms": ms,
                     "used": ms / point.target_ms, "in_band": 0.9 <= ms / point.target_ms <= 1.0 + 1e-9,
                     "blocks": blocks, "derivation": m["derivation"],
                     "predictor": m["latency_ms"][point.device]["predictor"]})
    df = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "budget_grid.csv", df.to_csv(index=False))
    md = ["# Exported latency / target on the search device's table\n",
          f"Searches: `{a.search}` on {a.dataset}, recipe defaults otherwise. "
          f"{int(df.in_band.sum())}/{len(df)} exports within [0.90, 1.00] of the target.\n",
          "| device | target ms | exported ms | exported / target | blocks | derivation | predictor |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r.device} | {r.target_ms:g} | {r.exported_ms:.3f} | {r.used:.3f} | {r.blocks} | {r.derivation} | "
           f"{r.predictor} |" for r in df.itertuples()]
    atomic_write_text(a.out / "budget_grid.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if df.in_band.all() else 1


if __name__ == "__main__":
    sys.exit(main())
