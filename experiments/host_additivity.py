"""Does the host's measured table add up to the whole network? ``python -m experiments.host_additivity``.

The search optimises the sum of the ``host`` table's entries (each layer candidate and fixed part timed on its
own). This benchmark times that table's entries and the whole networks of ``--archs`` random architectures of
the default space the same way: batch 1, one thread, torch eager, the profile's input, in the same interleaved
passes (so a machine whose speed drifts moves both alike). Per architecture: the table's sum, the whole
network and the table's error against it; summary: median and mean absolute error, the share within +-10%
and the worst. Goal: within +-10% for >= 90% of >= 20 architectures on a quiet machine.

    python -m experiments.host_additivity [--method context|isolated] [--archs 24] [--passes P] [--repeats R]
                                          [--label NAME] [--append]

The timing defaults are the ``host`` profile's (``latency.profiles.HOST_*``).

Writes ``host_additivity.csv`` (one row per architecture and label) and ``host_additivity.md`` into ``--out``
(default ``experiments/results/``); ``--append`` keeps the rows of other labels already in the CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.machine import machine
from experiments.markdown import md_table, report
from latency.lut import TABLE_METHODS, table_vs_whole
from latency.measured import MeasuredPredictor, available_cpus, load_average
from latency.profiles import HOST_REPEATS, HOST_TABLE_PASSES, HOST_WARMUP, load_profile
from search_spaces.spaces import get_space

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_WITHIN_PCT = 10.0
GOAL_SHARE = 0.9


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per label: architectures, median error, mean |error|, share within +-10%, worst |error| (percent)."""
    def one(g: pd.DataFrame) -> pd.Series:
        e = g.error_pct.to_numpy()
        return pd.Series({"archs": len(e), "median_error_pct": float(np.median(e)),
                          "mean_abs_error_pct": float(np.mean(np.abs(e))),
                          "within_10_pct": float(np.mean(np.abs(e) <= GOAL_WITHIN_PCT)),
                          "worst_abs_error_pct": float(np.max(np.abs(e))),
                          "median_whole_ms": float(g.whole_ms.median()),
                          "median_whole_iqr_pct": float(g.whole_iqr_pct.median())})
    return pd.DataFrame([{"label": label, **one(g)} for label, g in rows.groupby("label", sort=False)])


def run(args: argparse.Namespace) -> pd.DataFrame:
    torch.manual_seed(args.seed)
    space = get_space(args.space)
    profile = load_profile("host")
    predictor = MeasuredPredictor(threads=1, warmup=args.warmup, repeats=args.repeats, table_passes=args.passes)
    archs = [space.random_arch(args.seed + i) for i in range(args.archs)]
    load_before = load_average()
    table, rows = table_vs_whole(space, profile, predictor, archs, args.method, progress=True)
    load_after = load_average()
    rows.insert(0, "label", args.label or args.method)
    out = args.out / "host_additivity.csv"
    if args.append and out.is_file():
        old = pd.read_csv(out)
        rows = pd.concat([old[old.label != rows.label[0]], rows], ignore_index=True)
    s = summary(rows)
    verdict = ["", "Goal: table within +-10% of the whole network for >= 90% of >= 20 architectures: "
               + ", ".join(f"{r.label} {'met' if r.within_10_pct >= GOAL_SHARE and r.archs >= 20 else 'NOT met'}"
                           for r in s.itertuples())]
    loads = "unknown" if load_before is None else f"{load_before:.2f} -> {load_after:.2f}"
    lines = [
        "# Host table against the whole network",
        "",
        f"Machine: {machine()}, {available_cpus()} CPUs; torch {torch.__version__}; load average (1 min) "
        f"{loads} during the latest label's run.",
        f"Space `{args.space}` at the host profile's input {'x'.join(map(str, profile.input_shape))}; "
        f"{args.archs} random architectures (seeds {args.seed}..{args.seed + args.archs - 1}); "
        f"{predictor.version}. Table entries and whole networks are timed in the same {args.passes} "
        f"interleaved passes; `error_pct` = (table sum - whole network) / whole network. "
        f"Table of the latest run: {table.error_note}.",
        "",
        md_table(s, floatfmt="{:.3g}"),
        *verdict,
        "",
        "Per architecture (latest label):",
        "",
        md_table(rows[rows.label == (args.label or args.method)].drop(columns=["choices"]), floatfmt="{:.3g}"),
    ]
    report(args.out / "host_additivity", rows, lines)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="quadra")
    parser.add_argument("--archs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=HOST_WARMUP, help="untimed runs per entry and pass")
    parser.add_argument("--repeats", type=int, default=HOST_REPEATS, help="timed runs per entry, split over the passes")
    parser.add_argument("--passes", type=int, default=HOST_TABLE_PASSES)
    parser.add_argument("--method", choices=TABLE_METHODS, default=TABLE_METHODS[0],
                        help="time the table's entries inside whole networks (as tables are built) or each on its own")
    parser.add_argument("--label", default=None, help="the rows' label (default: the method)")
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
