"""Table III at several retrain lengths: does the family verdict hold when both families train long enough?

``python -m experiments.table3 --schedules 2,6,12``: the committed Table III exports (one per device and
space, ``--exports``, default ``experiments/results/table3_search_per_device.csv``) are retrained with the
Table III recipe at each number of epochs (cosine schedule over that length; ``--retrain-seeds`` seeds
each), so that only the training length changes. Every retrain records its test top-1 after each epoch
(``history.csv``). Writes ``table3_schedules.{csv,md}`` (top-1 mean and seed std per cell, quadra minus
MBConv with its standard error, the epoch from which quadra stays ahead on the mean learning curve) and
``table3_curves.png`` (one panel per device: top-1 against epochs, both families, one line per schedule).
Runs resume from their folders (shared with ``experiments.search_vs_random``); ``--report-only`` tables
what has finished.
"""

from __future__ import annotations

import argparse
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.markdown import md_table
from experiments.plots import device_panels
from experiments.search_vs_random import retrain_run, training_arch_file
from search_spaces.io import atomic_write_text

SPACES = ("quadra", "proxyless")
FAMILY = {"quadra": "QuadraBlock", "proxyless": "MBConv"}


def schedule_recipe(recipe: list[str], epochs: int) -> list[str]:
    """The recipe at ``epochs`` epochs, with a test top-1 after every epoch (the learning curve)."""
    kept = [o for o in recipe if not re.match(r"^(train\.epochs|eval\.every_epoch)=", o)]
    return [*kept, f"train.epochs={epochs}", "eval.every_epoch=true"]


def export_files(exports: pd.DataFrame, dataset: str, folder: Path) -> dict[tuple[str, str], Path]:
    """An arch.json per committed export, at the dataset's shape with its space's training stem stride (as the
    search exported it), keyed by (device, space)."""
    return {(r.device, r.space): training_arch_file(
        r.space, str(r.choices).split(), dataset,
        {"search": {"dataset": dataset, "device": r.device, "target_ms": float(r.target_ms)}},
        folder / f"{r.device}-{r.target_ms:g}ms-{r.space}" / "arch.json") for r in exports.itertuples()}


def curve(run_dir: Path) -> list[float]:
    """Test top-1 after each epoch of a finished retrain (its ``history.csv``)."""
    return pd.read_csv(run_dir / "history.csv")["test_top1"].tolist()


def run_cells(a: argparse.Namespace, recipe: list[str], schedules: list[int], seeds: list[int]) -> pd.DataFrame:
    """Retrain every (export, schedule, seed) not yet finished, ``a.jobs`` at a time; one row per finished run."""
    exports = pd.read_csv(a.exports)
    files = export_files(exports, a.dataset, a.root / "exports" / a.exports.stem)
    jobs = [(key, path, e, s) for e in schedules for key, path in files.items() for s in seeds]

    def one(job):
        (device, space), path, epochs, seed = job
        rec = schedule_recipe(recipe, epochs)
        res = retrain_run(path, seed, rec, a.dataset, a.root, not a.report_only)
        if res is None:
            return None
        print(f"{device} {space} {epochs} epochs seed {seed}: top-1 {res['top1']:.4f}", flush=True)
        return {"device": device, "space": space, "epochs": epochs, "seed": seed, "top1": res["top1"],
                "macs_M": res["deployment"]["macs"] / 1e6, "latency_ms": res["latency_ms"][device]["ms"],
                "train_time_s": res["train_time_s"],
                "curve": json.dumps(curve(Path(res["run_dir"])))}

    # the longest runs first, so that a session's end cuts the short ones (which finish in a later session)
    jobs.sort(key=lambda j: (-j[2], j[3]))
    with ThreadPoolExecutor(1 if a.report_only else a.jobs) as pool:
        rows = [r for r in pool.map(one, jobs) if r is not None]
    return pd.DataFrame(rows)


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Top-1 mean and seed std per (device, space, epochs)."""
    g = runs.groupby(["device", "space", "epochs"], sort=False)
    return g.agg(top1_mean=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"),
                 macs_M=("macs_M", "first"), latency_ms=("latency_ms", "first"),
                 train_s=("train_time_s", "median")).reset_index()


def lead_from(q: list[float], p: list[float]) -> int | None:
    """The first epoch (from 1) after which the quadra mean curve stays above the MBConv one, if any."""
    ahead = np.asarray(q) > np.asarray(p)
    for i in range(len(ahead)):
        if ahead[i:].all():
            return i + 1
    return None


def verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """Quadra minus MBConv per (device, epochs): the delta of means with its standard error, and where the
    mean learning curves cross."""
    out = []
    for (device, epochs), g in runs.groupby(["device", "epochs"], sort=False):
        q, p = (g[g.space == s] for s in SPACES)
        if not len(q) or not len(p):
            continue
        se = np.sqrt(q.top1.var(ddof=1) / len(q) + p.top1.var(ddof=1) / len(p)) if min(len(q), len(p)) > 1 else np.nan
        mean_curve = [np.mean([json.loads(c) for c in x.curve], axis=0) for x in (q, p)]
        delta = 100 * (q.top1.mean() - p.top1.mean())
        out.append({"device": device, "epochs": epochs, "quadra_minus_mbconv_pt": delta, "se_pt": 100 * se,
                    "delta_over_se": delta / (100 * se) if se else np.nan, "seeds": f"{len(q)}+{len(p)}",
                    "quadra_ahead_from_epoch": lead_from(*mean_curve) or "never"})
    return pd.DataFrame(out)


def plot_curves(runs: pd.DataFrame, path: Path) -> None:
    """Per device: test top-1 after each epoch, both families (colour), one line per schedule (style)."""
    styles = dict(zip(sorted(runs.epochs.unique()), ("-", "--", ":", "-.")))
    with device_panels(list(dict.fromkeys(runs.device)), path, dpi=110) as panels:
        for ax, device in panels:
            for (space, epochs), g in runs[runs.device == device].groupby(["space", "epochs"]):
                mean = np.mean([json.loads(c) for c in g.curve], axis=0)
                ax.plot(range(1, len(mean) + 1), mean, styles[epochs], color="C3" if space == "quadra" else "C0",
                        marker="o", ms=3, label=f"{FAMILY[space]}, {epochs} ep ({len(g)} seeds)")
            ax.set_title(device)
            ax.set_xlabel("epoch")
            ax.set_ylabel("test top-1 (mean over seeds)")
            ax.legend(fontsize=6)


def report(runs: pd.DataFrame, recipe: list[str], exports: Path, out: Path, planned: int) -> str:
    table, verdict = cells(runs), verdicts(runs)
    atomic_write_text(out / "table3_schedules.csv", runs.to_csv(index=False))
    show = table.assign(space=table.space.map(FAMILY))
    lines = ["# Table III at several retrain lengths: QuadraBlock vs MBConv, the same exports\n",
             f"Finished runs: {len(runs)} of the {planned} asked for (the others resume from their folders on the "
             "same command).\n",
             f"Exports: `{exports.name}` (one searched network per device and space, searched once, on the latency "
             "tables of that run; they are not searched again when the tables change). Retrain: "
             f"`{' '.join(schedule_recipe(recipe, 0)).replace('train.epochs=0 ', '')}` with `train.epochs` "
             "as in the column (a cosine schedule over that length), Fashion-MNIST test top-1, mean and seed std; "
             "train_s: median seconds of training per run (1 thread, shared 2-core machine); latency_ms: the "
             "export's table latency on its device under the tables of the retrain (the current ones: calibrated "
             "stand-ins, gpu roofline), which may have moved since the search.\n",
             md_table(show, floatfmt="{:.4g}"),
             "\nQuadra minus MBConv (SE from the seeds' std of both cells; `quadra_ahead_from_epoch`: the first epoch "
             "after which the mean learning curve of quadra stays above MBConv's):\n",
             md_table(verdict, floatfmt="{:.3g}") if len(verdict) else "(no device has both families yet)"]
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "table3_schedules.md", md)
    plot_curves(runs, out / "table3_curves.png")
    return md


def main(a: argparse.Namespace, recipe: list[str], schedules: list[int], seeds: list[int]) -> int:
    runs = run_cells(a, recipe, schedules, seeds)
    if runs.empty:
        print("no finished runs yet", flush=True)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    planned = len(pd.read_csv(a.exports)) * len(schedules) * len(seeds)
    print(report(runs, recipe, a.exports, a.out, planned))
    return 0

