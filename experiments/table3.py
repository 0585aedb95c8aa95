"""Does a QuadraBlock search beat ProxylessNAS's MBConv search per device (paper Table III)?
``python -m experiments.table3``.

For each (device, target) of the grid and each search space (``quadra``, ``proxyless``):

1. search once (seed 0) with one search recipe (``--variant``/``--search``, the same for both spaces;
   default: the product's search defaults -- band sampling, select -- on 10k images with 1 warm-up + 2 search
   epochs, see DEFAULT_SEARCH);
2. retrain the export with one recipe and ``--retrain-seeds`` (default 0,1);
3. print the paper's columns: MACs and params of the deployment network (3x224x224, 1000 classes),
   latency on cpu, vpu and gpu (table sums; each labelled with its predictor), the whole deployment
   network measured on this host (torch eager, 1 thread, median), and top-1 mean +- std over the
   retrain seeds -- with the paper's row beside ours.

Targets: the paper's 300 / 30 / 3 ms are for ImageNet-size spaces and nn-Meter's predictors. Our
default grid (vpu 30 ms, cpu 30 ms, gpu 1 ms) is where both spaces are feasible on the stand-in
tables and the target binds (it lies inside both spaces' latency ranges, which the output prints).

Run folders are shared with ``experiments.search_vs_random`` (same ``--root`` layout): the quadra
searches of a variant are the ones that benchmark ran, the proxyless ones live in ``VARIANT-proxyless``.
Everything resumes: rerun the same command. ``--report-only`` builds tables from finished runs.
``--schedules 2,6,12`` retrains the committed exports at several lengths instead (:mod:`experiments.table3_schedules`).

``--pricing nnmeter`` runs the searches with ``pricing=nnmeter`` (the stand-ins price only what nn-Meter's
predictor would; folders ``VARIANT-nnmeter[-proxyless]``) and reports every latency column under that pricing
(table sums recomputed from the exported choices). A (device, space) whose latency table is the same under both
pricings (the gpu roofline; MBConv on the cpu) would search exactly as under ``device``: its row is taken from
the device-pricing table (``--reuse``, default ``experiments/results/table3_search_per_device.csv``) instead of
being searched and retrained again. ``table3_pricing.md`` puts both pricings and the paper side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.markdown import md_table
from experiments.plots import device_panels
from experiments.search_vs_random import (
    ROOT,
    Point,
    add_run_args,
    claim_variant,
    parse_grid,
    parse_seeds,
    retrain_run,
    search_run,
    space_cfg,
)
from latency.lut import deployment_space, get_table
from latency.profiles import load_profile
from search_spaces.arch import Arch
from search_spaces.io import atomic_write_text
from search_spaces.spaces import space_from_config

SPACES = ("quadra", "proxyless")
# The search recipe of both spaces: the product defaults on 10k images, 1 warm-up + 2 search epochs. The MBConv
# supernet (widths to 320, expansion 6) takes ~4x the quadra one per step on one CPU thread, so the README's
# 20k-image, 1+3-epoch search would cost ~1 hour per proxyless search here. The sampling is named although it is
# the default: variant "short" ran before band sampling was, and a variant's folder must hold one recipe.
DEFAULT_VARIANT = "short_band"
DEFAULT_SEARCH = "dataset.limit=10000 train.warmup_epochs=1 train.epochs=2 train.sampling=band"
# Table III of the QuadraNet paper (ImageNet, nn-Meter, targets 300 / 30 / 3 ms): MACs ("FLOPs"), latencies, top-1
PAPER = {("proxyless", "cpu"): (333, 299.6, 53.1, 1.8, 72.4), ("proxyless", "vpu"): (275, 379.1, 29.9, 1.7, 72.7),
         ("proxyless", "gpu"): (1065, 1521.1, 146.1, 2.9, 74.4), ("quadra", "cpu"): (279, 299.8, 34.7, 2.1, 73.1),
         ("quadra", "vpu"): (312, 437.1, 29.9, 1.9, 73.2), ("quadra", "gpu"): (948, 1334.2, 117.5, 2.9, 76.7)}
DEVICES = ("cpu", "vpu", "gpu")


def variant_name(variant: str, space: str) -> str:
    return variant if space == "quadra" else f"{variant}-{space}"


def _table(space: str, device: str, pricing: str = "device"):
    return get_table(space_from_config(space_cfg(space)), load_profile(device, pricing=pricing), progress=False)


def same_tables(space: str, device: str) -> bool:
    """Whether ``space``'s latency table on ``device`` is the same under both pricings (so a search there
    under ``pricing=nnmeter`` would be the device-pricing one)."""
    a, b = _table(space, device, "device"), _table(space, device, "nnmeter")
    return (np.allclose(a.layers.latency_ms, b.layers.latency_ms, rtol=1e-12, atol=0)
            and np.allclose(a.fixed.latency_ms, b.fixed.latency_ms, rtol=1e-12, atol=0))


def priced_latencies(space: str, choices: list[str], pricing: str) -> dict[str, dict]:
    """Table sums of an architecture (its choices) on every device under ``pricing``, with their predictor."""
    out = {}
    for d in DEVICES:
        t = _table(space, d, pricing)
        dep = deployment_space(space_from_config(space_cfg(space)), load_profile(d)).arch(choices)
        out[d] = {"ms": t.arch_ms(dep), "predictor": t.predictor}
    return out


def space_ranges(points: list[Point], pricing: str = "device") -> pd.DataFrame:
    """Each space's latency range on each grid device: the target must lie inside both to bind."""
    rows = []
    for point in points:
        for name in SPACES:
            lo, hi = _table(name, point.device, pricing).range_ms()
            rows.append({"device": point.device, "space": name, "min_ms": lo, "max_ms": hi,
                         "target_ms": point.target_ms,
                         "binds": lo <= point.target_ms <= hi})
    return pd.DataFrame(rows)


def host_ms(arch_path: Path, cache: Path) -> dict:
    """The deployment network measured on this host (``latency.predict``, its own 1-thread process, so this
    process's threads and memory do not disturb the timing); cached per architecture file."""
    known = json.loads(cache.read_text()) if cache.exists() else {}
    key = str(arch_path)
    if key not in known:
        out = subprocess.run([sys.executable, "-m", "latency.predict", f"arch={arch_path}", "device=host",
                              "format=json"], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
        row = json.loads(out)[0]
        known[key] = {"ms": row["whole_net_ms"], "predictor": row["predictor"]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(known, indent=1) + "\n")
    return known[key]


def table_rows(runs: list[dict], cache: Path, pricing: str = "device") -> pd.DataFrame:
    """One row per (device, space): the paper's columns, top-1 over the retrain seeds. Under ``pricing`` other
    than device the latency columns are table sums under that pricing."""
    out = []
    for r in runs:
        res = r["results"]
        first = res[0]
        lat = first["latency_ms"]
        if pricing != "device":
            lat = priced_latencies(r["space"], list(Arch.load(r["arch_path"]).choices), pricing)
        host = host_ms(r["arch_path"], cache)
        top1 = np.array([x["top1"] for x in res])
        paper = PAPER.get((r["space"], r["device"]))
        out.append({
            "device": r["device"], "target_ms": r["target_ms"], "space": r["space"], "variant": r["variant"],
            "macs_M": first["deployment"]["macs"] / 1e6, "params_M": first["deployment"]["params"] / 1e6,
            **{f"{d}_ms": lat[d]["ms"] for d in DEVICES if d in lat},
            **{f"{d}_predictor": lat[d]["predictor"] for d in DEVICES if d in lat},
            "host_ms": host["ms"], "host_predictor": host["predictor"],
            "top1_mean": top1.mean(), "top1_std": top1.std(ddof=1) if len(top1) > 1 else np.nan, "n_seeds": len(top1),
            "paper_macs_M": paper[0] if paper else np.nan, "paper_cpu_ms": paper[1] if paper else np.nan,
            "paper_vpu_ms": paper[2] if paper else np.nan, "paper_gpu_ms": paper[3] if paper else np.nan,
            "paper_top1": paper[4] if paper else np.nan, "choices": " ".join(Arch.load(r["arch_path"]).choices)})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, ranges: pd.DataFrame, recipe: list[str], search: list[str], variant: str,
             pricing: str = "device") -> str:
    """The paper's columns, ours and theirs, then the delta quadra - proxyless per device."""
    predictors = {d: table[f"{d}_predictor"].iloc[0] for d in DEVICES if f"{d}_predictor" in table}
    reused = table[table.variant.astype(str).str.startswith("reused")] if "variant" in table else table.iloc[:0]
    lines = [f"# Table III: QuadraBlock search vs MBConv (ProxylessNAS) search, per device (pricing={pricing})\n",
             f"Search recipe: variant `{variant}` (`{' '.join(search) or 'defaults'}`), seed 0, both spaces. "
             f"Retrain: `{' '.join(recipe)}` on Fashion-MNIST; top-1 is mean +- std over retrain seeds. "
             "MACs and params are of the deployment network (3x224x224, 1000 classes). Latencies are table sums: "
             + "; ".join(f"{d}: `{p}`" for d, p in predictors.items())
             + f". host: the whole deployment network measured here (`{table.host_predictor.iloc[0]}`, "
             "noisy shared machine). Paper: ImageNet, nn-Meter, targets 300/30/3 ms.\n"]
    if len(reused):
        lines.append("Rows taken from the device-pricing table, because that space's table on that device is the "
                     "same under both pricings (the search would be the same): "
                     + ", ".join(f"{r.device}/{r.space}" for r in reused.itertuples()) + ".\n")
    top1 = zip(table.top1_mean, table.top1_std, table.n_seeds)
    show = table.assign(top1=[f"{m:.4f} +- {s:.4f} ({n})" for m, s, n in top1])
    cols = ["device", "target_ms", "space", "macs_M", "params_M", "cpu_ms", "vpu_ms", "gpu_ms", "host_ms", "top1",
            "paper_macs_M", "paper_cpu_ms", "paper_vpu_ms", "paper_gpu_ms", "paper_top1"]
    lines.append(md_table(show[[c for c in cols if c in show]]))
    deltas = []
    for device, g in table.groupby("device", sort=False):
        s = g.set_index("space")
        if set(SPACES) <= set(s.index):
            q, p = s.loc["quadra"], s.loc["proxyless"]
            paper = PAPER[("quadra", device)][4] - PAPER[("proxyless", device)][4]
            deltas.append({"device": device, "target_ms": q.target_ms,
                           "delta_top1_pt": 100 * (q.top1_mean - p.top1_mean),
                           "macs_ratio": q.macs_M / p.macs_M, "paper_delta_top1_pt": paper,
                           "paper_macs_ratio": PAPER[("quadra", device)][0] / PAPER[("proxyless", device)][0]})
    if deltas:
        lines += ["\nQuadra minus proxyless (ours vs the paper's):\n", md_table(pd.DataFrame(deltas))]
    lines += ["\nWhy these targets: each lies inside both spaces' latency ranges on its table, so both searches "
              "are feasible and the budget binds:\n", md_table(ranges)]
    return "\n".join(lines) + "\n"


def side_by_side(device: pd.DataFrame, other: pd.DataFrame, pricing: str) -> str:
    """Table III under ``pricing=device`` and under ``pricing``, beside the paper's column: MACs, the vpu table
    sum (each under its own pricing), top-1, and quadra minus proxyless per device."""
    rows, deltas = [], []
    for dev in DEVICES:
        for space in SPACES:
            a = device[(device.device == dev) & (device.space == space)]
            b = other[(other.device == dev) & (other.space == space)]
            if not len(a) and not len(b):
                continue
            paper = PAPER[(space, dev)]
            get = lambda t, c: float(t[c].iloc[0]) if len(t) else float("nan")  # noqa: E731
            rows.append({"device": dev, "space": space,
                         "macs_M device": get(a, "macs_M"), f"macs_M {pricing}": get(b, "macs_M"),
                         "paper_macs_M": paper[0],
                         f"{dev}_ms device": get(a, f"{dev}_ms"), f"{dev}_ms {pricing}": get(b, f"{dev}_ms"),
                         f"paper_{dev}_ms": paper[{"cpu": 1, "vpu": 2, "gpu": 3}[dev]],
                         "top1 device": get(a, "top1_mean"), f"top1 {pricing}": get(b, "top1_mean"),
                         "paper_top1": paper[4],
                         f"{pricing} row": "not run" if not len(b) else str(b.variant.iloc[0])})
    df = pd.DataFrame(rows)
    for dev, g in df.groupby("device", sort=False):
        s = g.set_index("space")
        if set(SPACES) <= set(s.index):
            q, p = s.loc["quadra"], s.loc["proxyless"]
            deltas.append({"device": dev,
                           "delta_top1_pt device": 100 * (q["top1 device"] - p["top1 device"]),
                           f"delta_top1_pt {pricing}": 100 * (q[f"top1 {pricing}"] - p[f"top1 {pricing}"]),
                           "paper_delta_top1_pt": q.paper_top1 - p.paper_top1,
                           "macs_ratio device": q["macs_M device"] / p["macs_M device"],
                           f"macs_ratio {pricing}": q[f"macs_M {pricing}"] / p[f"macs_M {pricing}"],
                           "paper_macs_ratio": q.paper_macs_M / p.paper_macs_M})
    lines = [f"# Table III under pricing=device and pricing={pricing}, beside the paper\n",
             "Each latency is a table sum of the device's stand-in (NOT nn-Meter: calibrated on cpu and vpu, an "
             "uncalibrated roofline on gpu, `standin/a100`) under the column's pricing: "
             "`device` prices every op, `nnmeter` only the kernels nn-Meter's predictor would (LN/GELU/Mul/"
             "Transpose, on the vpu also Add, at 0 ms; fc as one row). The paper's column is nn-Meter's "
             "(ImageNet, targets 300/30/3 ms; only its VPU column is on nn-Meter's scale). Top-1: Fashion-MNIST, "
             "the Table III recipe; mean over retrain seeds.\n", md_table(df, floatfmt="{:.4g}")]
    if deltas:
        lines += ["\nQuadra minus proxyless:\n", md_table(pd.DataFrame(deltas), floatfmt="{:.3g}")]
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    with device_panels(list(dict.fromkeys(table.device)), path, dpi=110) as panels:
        for ax, device in panels:
            g = table[table.device == device]
            for space, marker in zip(SPACES, ("*", "o")):
                s = g[g.space == space]
                ax.errorbar(s[f"{device}_ms"], s.top1_mean, yerr=s.top1_std.fillna(0), fmt=marker, ms=10,
                            capsize=3, label=space)
            ax.axvline(g.target_ms.iloc[0], color="k", lw=0.6, ls=":")
            ax.set_title(f"{device} ({g[f'{device}_predictor'].iloc[0]})", fontsize=8)
            ax.set_xlabel(f"{device} latency (ms, table)")
            ax.set_ylabel("retrained top-1")
            ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="vpu:30ms,cpu:30ms,gpu:1ms")
    p.add_argument("--variant", default=DEFAULT_VARIANT, help="name of the search recipe (folder name)")
    p.add_argument("--search", default=DEFAULT_SEARCH, help="nas.search overrides of the recipe (both spaces)")
    p.add_argument("--retrain-seeds", default="0,1")
    p.add_argument("--spaces", default=",".join(SPACES), help="run only these spaces (the tables show all finished)")
    p.add_argument("--pricing", default="device", choices=("device", "nnmeter"),
                   help="latency pricing of the searches and of the reported table sums")
    p.add_argument("--reuse", type=Path, default=Path(__file__).resolve().parent / "results"
                   / "table3_search_per_device.csv",
                   help="--pricing nnmeter: the device-pricing table whose rows stand for points with equal tables")
    p.add_argument("--schedules", default=None,
                   help="e.g. 2,6,12: retrain the --exports at each number of epochs instead of searching "
                        "(experiments.table3_schedules)")
    p.add_argument("--exports", type=Path, default=Path(__file__).resolve().parent / "results"
                   / "table3_search_per_device.csv", help="--schedules: the table whose exports are retrained")
    add_run_args(p, "tables from finished runs; run nothing")
    a = p.parse_args(argv)
    points = parse_grid(a.grid)
    seeds = parse_seeds(a.retrain_seeds)
    recipe, search = shlex.split(a.recipe), shlex.split(a.search)
    if a.schedules:
        from experiments import table3_schedules
        return table3_schedules.main(a, recipe, parse_seeds(a.schedules), seeds)
    dirs = {}
    suffix = "" if a.pricing == "device" else f"-{a.pricing}"
    for space in SPACES:
        overrides = search + ([f"search_space={space}"] if space != "quadra" else [])
        overrides += [f"pricing={a.pricing}"] if a.pricing != "device" else []
        d = a.root / "search" / a.dataset / variant_name(a.variant + suffix, space)
        claim_variant(d, overrides)
        dirs[space] = (d, overrides)

    reuse = pd.read_csv(a.reuse) if a.pricing != "device" and a.reuse.is_file() else None

    def task(point: Point, space: str) -> dict | None:
        d, overrides = dirs[space]
        if reuse is not None and same_tables(space, point.device):
            row = reuse[(reuse.device == point.device) & (reuse.space == space)]
            if len(row):
                return {"reused": row.iloc[0].to_dict()}
        run = not a.report_only and space in spaces  # the other spaces: read what has finished
        arch_path = search_run(point, 0, d, overrides, a.dataset, run)
        if arch_path is None:
            return None
        res = [retrain_run(arch_path, s, recipe, a.dataset, a.root, run) for s in seeds]
        res = [r for r in res if r is not None]
        return res and {"device": point.device, "target_ms": point.target_ms, "space": space, "variant": d.name,
                        "arch_path": arch_path, "results": res}

    # proxyless first: its searches take longest, and the quadra ones are often already done (search_vs_random)
    spaces = [s for s in a.spaces.split(",") if s]
    if not set(spaces) <= set(SPACES):
        p.error(f"--spaces {a.spaces}: valid: {', '.join(SPACES)}")
    run_tasks = [(point, space) for space in reversed(SPACES) for point in points if space in spaces]
    tasks = run_tasks + [(point, space) for space in reversed(SPACES) for point in points if space not in spaces]
    runs, failures, t0 = [], [], time.perf_counter()
    with ThreadPoolExecutor(1 if a.report_only else a.jobs) as pool:
        futures = {pool.submit(task, *t): t for t in tasks}
        for i, fut in enumerate(as_completed(futures), 1):
            point, space = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # one failed run must not lose the others' results
                failures.append(f"{space} {point.tag}: {e}")
                print(f"[{i}/{len(tasks)}] FAILED {space} {point.tag}: {e}", file=sys.stderr, flush=True)
                continue
            if r:
                runs.append(r)
                top1 = ([round(x["top1"], 4) for x in r["results"]] if "results" in r
                        else f"{r['reused']['top1_mean']:.4f} (reused: same table under both pricings)")
                print(f"[{i}/{len(tasks)} {time.perf_counter() - t0:.0f}s] {space} {point.tag}: top-1 {top1}",
                      flush=True)
    if not runs:
        print("no finished runs yet", file=sys.stderr)
        return 1
    order = {(pt.device, s): i for i, (pt, s) in enumerate((pt, s) for pt in points for s in SPACES)}
    reused_rows = [r["reused"] for r in runs if "reused" in r]
    runs = [r for r in runs if "reused" not in r]
    table = table_rows(runs, a.root / "table3_host_ms.json", a.pricing) if runs else pd.DataFrame()
    for row in reused_rows:  # the device-pricing row; its latency columns under this pricing
        lat = priced_latencies(row["space"], str(row["choices"]).split(), a.pricing)
        row = {**row, "variant": f"reused: {row['variant']}", **{f"{d}_ms": lat[d]["ms"] for d in DEVICES},
               **{f"{d}_predictor": lat[d]["predictor"] for d in DEVICES}}
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    table = table.iloc[sorted(range(len(table)), key=lambda i: order[(table.device.iloc[i], table.space.iloc[i])])]
    table = table.reset_index(drop=True)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "table3_search_per_device" + ("" if a.pricing == "device" else f"_{a.pricing}")
    atomic_write_text(a.out / f"{stem}.csv", table.to_csv(index=False))
    md = markdown(table, space_ranges(points, a.pricing), recipe, search, a.variant + suffix, a.pricing)
    atomic_write_text(a.out / f"{stem}.md", md)
    plot(table, a.out / f"{stem}.png")
    print(md)
    if a.pricing != "device" and a.reuse.is_file():
        side = side_by_side(pd.read_csv(a.reuse), table, a.pricing)
        atomic_write_text(a.out / "table3_pricing.md", side)
        print(side)
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
